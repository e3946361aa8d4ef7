"""trainyard core: versioned store, bundles and step contracts, with no Airflow import."""

__version__ = "0.1.0"
