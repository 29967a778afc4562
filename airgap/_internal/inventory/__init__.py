"""The signed inventory: what each packed image holds, read while pack streams its layers.

Pack's bundle writer lends every blob's bytes to a tap (:mod:`.tap`) as it stages them, so nothing is
read twice and nothing is copied to disk.  A blob that is a layer (a tar, plain, gzip or zstd) is walked
(:mod:`.tarwalk`) in a thread of its own behind a small bounded queue; only the members the inventory
needs are parsed (:mod:`.parsers`: dpkg and apk databases, Python ``*.dist-info/METADATA``, npm
``package.json`` under ``node_modules``, os-release, Debian copyright files, Ollama model manifests;
:mod:`.gguf`: GGUF model headers), everything else is skipped.  Every parser reads a bounded number of
bytes and keeps a bounded number of records: a hostile layer costs a warning, never memory.

Per image, the layers' findings are merged in order with whiteouts honoured (:mod:`.records`), and
written as one CycloneDX JSON document (:mod:`.cyclonedx`), a signed bundle file ``sbom/<image-id>.cdx.json``.
``inspect --sbom`` and ``diff`` read them back through the same module.
"""
