"""Can this machine do a real run? Machine checks (``checks``), GPU memory estimates
(``gpu_memory``) and the full-size random-weight architectures they count (``full_size_models``)."""
