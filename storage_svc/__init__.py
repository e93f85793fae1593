"""storage_svc: the catalog of datasets and models in the Lance lake (``aiplatform.v1.StorageService``)."""
