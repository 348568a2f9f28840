"""``stabledreamer models list|download|verify|remove|token``: model sets from the command line.

Imports no torch (``cli.main`` builds only this parser for ``models``): answers in a fraction of
a second. Every failure the user can fix is one line (``StableDreamerError``, exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

from .sets import DEFAULT_SET, MODEL_SETS, SET_IDS, get_set
from .store import human_bytes


def add_parser(sub) -> None:
    p = sub.add_parser(
        "models",
        help="model sets: which are downloaded, their sizes and licences; download (progress, "
        "resume, cancel with Ctrl-C), verify, remove; the hub token",
    )
    msub = p.add_subparsers(dest="models_command", required=True)
    ls = msub.add_parser("list", help="each set: its models, present or missing, sizes, licence")
    ls.add_argument("set", nargs="?", choices=SET_IDS, help="one set (default: all)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    dl = msub.add_parser("download", help="download a set into the Hugging Face cache")
    dl.add_argument("set", nargs="?", default=DEFAULT_SET, choices=SET_IDS,
                    help="the set (default %(default)s)")  # fmt: skip
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    vf = msub.add_parser("verify", help="check a set's files (and with --online its hub ids)")
    vf.add_argument("set", nargs="?", choices=SET_IDS, help="one set (default: all)")
    online = "also ask the hub whether each id still resolves (nothing is downloaded)"
    vf.add_argument("--online", action="store_true", help=online)
    digest = "also compare each weight file's SHA-256 with the hub's listing (reads them all)"
    vf.add_argument("--hash", action="store_true", help=digest)
    vf.add_argument("--json", action="store_true", help="print JSON")
    rm = msub.add_parser("remove", help="delete a set's models from the Hugging Face cache")
    rm.add_argument("set", choices=SET_IDS)
    shared = "also delete models another downloaded set uses (SD 2.1-base is in every set)"
    rm.add_argument("--include-shared", action="store_true", help=shared)
    tok = msub.add_parser("token", help="the hub token (stored owner-only, never shown)")
    tsub = tok.add_subparsers(dest="token_command", required=True)
    ts = tsub.add_parser(
        "set", help="store a token: read from stdin (piped) or a hidden prompt, never from argv"
    )
    ts.add_argument("--from-file", metavar="FILE", help="read the token from FILE instead")
    tsub.add_parser("clear", help="delete the stored token")
    tsub.add_parser("status", help="say whether a token is set and where from (not its value)")


def run(args) -> int:
    return {
        "list": cmd_list,
        "download": cmd_download,
        "verify": cmd_verify,
        "remove": cmd_remove,
        "token": cmd_token,
    }[args.models_command](args)


def _say(msg: str) -> None:
    print(f"stabledreamer: {msg}", file=sys.stderr, flush=True)


def cmd_list(args) -> int:
    from .store import set_status

    ids = [args.set] if args.set else list(SET_IDS)
    states = {i: set_status(i) for i in ids}
    if args.json:
        print(json.dumps([{**MODEL_SETS[i].to_dict(), "status": states[i].to_dict()}
                          for i in ids], indent=2))  # fmt: skip
        return 0
    for i in ids:
        s, st = MODEL_SETS[i], states[i]
        state = "downloaded" if st.present else f"missing {human_bytes(st.bytes_missing)}"
        if st.bytes_partial and not st.present:
            state += f", {human_bytes(st.bytes_partial)} of it resumable"
        default = " (default)" if i == DEFAULT_SET else ""
        print(f"{i}{default}: {s.title} [{state}]")
        print(f"  {s.summary}")
        print(f"  output: {s.output_use}")
        for lic in s.licences:
            print(f"  licence: {lic.name} <{lic.url}>")
        print(f"  memory: {s.memory_tier_gb} GB tier and up ({s.memory_note})")
        for m, ref in zip(st.models, s.models, strict=True):
            if m.present:
                where = f"present, {human_bytes(m.bytes_present)}"
            else:
                where = f"missing, about {human_bytes(m.bytes_expected - m.bytes_present)}"
            gated = f"; gated: accept the licence at {ref.hub_page}" if ref.gated else ""
            print(f"  - {ref.repo_id} ({m.title}, {m.role}): {where}{gated}")
        for note in s.notes:
            print(f"  note: {note}")
    print(f"cache: {next(iter(states.values())).cache_dir}")
    return 0


def _progress_bar(quiet: bool):
    if quiet:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1000, dynamic_ncols=True,
               file=sys.stderr, mininterval=0.2)  # fmt: skip

    def update(p) -> None:
        if bar.total != p.bytes_total:
            bar.reset(total=p.bytes_total)
        bar.set_description(f"{p.repo_id or p.set_id} [{p.files_done}/{p.files_total} files]",
                            refresh=False)  # fmt: skip
        bar.update(p.bytes_done - bar.n)

    return update, bar


def cmd_download(args) -> int:
    from . import download
    from .errors import DownloadCancelled

    s = get_set(args.set)
    _say(f"model set {s.id}: {s.title}")
    _say(f"licence of the output: {s.output_use}")
    for lic in s.licences:
        _say(f"  {lic.name}: {lic.url}")
    update, bar = _progress_bar(args.quiet)
    cancel = threading.Event()
    result: dict = {}

    def work() -> None:
        try:
            result["status"] = download.download_set(s, progress=update, cancel=cancel)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            result["error"] = e

    t = threading.Thread(target=work, name="models-download", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.2)
    except KeyboardInterrupt:
        cancel.set()
        t.join()
    finally:
        if bar is not None:
            bar.close()
    if "error" in result:
        e = result["error"]
        if isinstance(e, DownloadCancelled):
            _say(str(e))
            return 130
        raise e
    st = result["status"]
    print(f"{s.id}: downloaded, {human_bytes(st.bytes_present)} in {st.cache_dir}")
    return 0


def cmd_verify(args) -> int:
    from .verify import verify_set

    ids = [args.set] if args.set else list(SET_IDS)
    results = [verify_set(i, online=args.online, hashes=args.hash) for i in ids]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            print(f"{r.set_id}: {'ok' if r.ok else 'not ready'}")
            for c in r.checks:
                print(f"  [{c.status:>7}] {c.repo_id}: {c.detail}")
        if not args.online:
            print("hub ids not checked: add --online to ask the hub whether each still resolves")
    return 0 if all(r.ok for r in results) else 1


def cmd_remove(args) -> int:
    from .store import remove_set, set_status

    s = get_set(args.set)
    keep: tuple[str, ...] = ()
    if not args.include_shared:  # what another downloaded set still needs stays
        others = {r for o in MODEL_SETS.values()
                  if o.id != s.id and set_status(o).present for r in o.repos()}  # fmt: skip
        keep = tuple(r for r in s.repos() if r in others)
    gone = remove_set(s, keep=keep)
    for folder in gone:
        print(f"removed {folder}")
    if keep:
        print(f"kept {', '.join(keep)} (another downloaded set uses it; --include-shared "
              "removes it too)")  # fmt: skip
    if not gone:
        print(f"{s.id}: nothing of it was in the cache")
    return 0


def cmd_token(args) -> int:
    from .token import clear_token, describe, save_token, token_path

    if args.token_command == "status":
        print(describe())
        return 0
    if args.token_command == "clear":
        print("hub token deleted" if clear_token() else f"no stored token at {token_path()}")
        return 0
    if args.from_file:
        from pathlib import Path

        value = Path(args.from_file).read_text()
    elif sys.stdin.isatty():
        import getpass

        value = getpass.getpass("Hugging Face token (input hidden): ")
    else:
        value = sys.stdin.readline()
    path = save_token(value)
    print(f"hub token stored in {path} (owner-only; value not shown)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A parser with only ``models`` (``cli.main`` uses it: nothing heavy is imported)."""
    parser = argparse.ArgumentParser(prog="stabledreamer")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser
