"""Storage formats as bytes and names: what the loaders read and the writers write.

* :mod:`.n5` — N5 containers: ``attributes.json``, block headers, compression, datasets;
* :mod:`.deflate` — deflate streams (HDF5's gzip filter, N5's gzip), through ISA-L when installed;
* :mod:`.bdv` — BigDataViewer's layouts (HDF5, N5, OME-Zarr group names) and pixel types.

Nothing here knows about projects or views: the loaders (:mod:`tilefuse.loaders`)
turn these into views of a project, the writers (:mod:`tilefuse.writers`) write them.
"""
