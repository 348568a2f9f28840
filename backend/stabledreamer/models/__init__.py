"""Model sets: which models a run uses, their licences, where they are, and getting them.

- ``sets``: the sets (``if-sd``, ``if-sd-small``, ``sd-only``) and the hub ids, the one place
  they are written;
- ``store``: which files of a set are on this machine (``SetStatus``, JSON for the wire),
  ``require_set`` (``ModelsMissingError``, code ``models_missing``), ``remove_set``;
- ``download``: ``download_set`` with progress, cancel, a free-disk check and one-line errors;
- ``background``: a download in a thread that a service polls (``Downloads``: one per set);
- ``token``: the hub token, stored owner-only and never shown;
- ``verify``: the files of a set, and (``--online``) whether its hub ids still resolve;
- ``testing_hub``: a local stand-in for the hub on loopback (tests, benches).

Nothing here imports torch: the service answers model questions at once.
"""

from .errors import (
    DownloadCancelled,
    GatedModelError,
    ModelError,
    ModelsMissingError,
    NoNetworkError,
    UnknownModelError,
)
from .sets import DEFAULT_SET, MODEL_SETS, SET_IDS, Licence, ModelRef, ModelSet, get_set
from .store import ModelStatus, SetStatus, remove_set, require_set, set_status

__all__ = [
    "DEFAULT_SET",
    "MODEL_SETS",
    "SET_IDS",
    "DownloadCancelled",
    "GatedModelError",
    "Licence",
    "ModelError",
    "ModelRef",
    "ModelSet",
    "ModelStatus",
    "ModelsMissingError",
    "NoNetworkError",
    "SetStatus",
    "UnknownModelError",
    "get_set",
    "remove_set",
    "require_set",
    "set_status",
]
