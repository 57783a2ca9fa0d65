"""The live dashboard served by the admin server at / (issue 9).

`web` adds the page and its JSON documents to the admin application, `api`
builds those documents from the admin state, `samples` reads the Prometheus
exposition back into numbers, `static/` holds the page (HTML, one script,
one stylesheet; no build step). The dashboard only reads, like the rest of
the admin API.
"""
