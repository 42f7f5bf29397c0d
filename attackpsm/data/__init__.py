"""Data: 2AFC triplet datasets, lazy loading, sharding."""

from attackpsm.data.base import Batch, TripletDataset, TripletRecord, collate, shard_records

__all__ = ["Batch", "TripletDataset", "TripletRecord", "collate", "shard_records"]
