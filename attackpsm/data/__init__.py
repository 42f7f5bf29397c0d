"""Data: 2AFC triplet datasets, lazy loading, sharding.

``synthetic`` (embedded), ``bapps``, ``pieapp`` and ``clic`` (read from disk, see
:mod:`attackpsm.data.files`); ``python -m attackpsm data`` downloads and counts them.
"""

from attackpsm.data.base import Batch, TripletDataset, TripletRecord, collate, shard_records

__all__ = ["Batch", "TripletDataset", "TripletRecord", "collate", "shard_records"]
