"""``nvfp4tools check``: a pre-deploy gate. A policy (:mod:`.policy`) says what a checkpoint must
satisfy; :mod:`.gate` evaluates it with inspect, estimate and verify; :mod:`.outputs` renders the
verdict for people and for CI systems."""
