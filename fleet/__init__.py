"""Fleet scale: segment archives of recordings on Ray (`python -m fleet INPUT... --out DIR`)."""
