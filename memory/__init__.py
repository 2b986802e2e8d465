"""Image-feature memory: a frozen encoder (``encoder``), FAISS indexes (``index``), the process-safe store of
verified cases (``store``) and its benchmark (``bench``, ``macro eval memory``)."""
