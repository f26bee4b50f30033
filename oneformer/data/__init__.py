"""Datasets in TAO's layouts: staging from folders, archives and S3, readers, label maps, targets and transforms."""
