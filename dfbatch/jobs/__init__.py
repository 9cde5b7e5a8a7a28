"""Jobs: rows become requests, and outcomes become values, for every front end.

``embed`` packs texts into embeddings requests and decodes the vectors; ``chat`` builds chat
requests from templates or functions and parses the answers; ``run`` joins the engine, the cache
and the progress bar (``progress``) into one run; ``sync`` runs it from synchronous code (a
notebook's cell); ``options`` types the keyword options every front end takes.

May import: the engine and the cache; never pandas (``dfbatch run`` must not load it) nor a front
end. In: plain values (texts, prompts, request bodies); out: answers and errors per row.
"""
