"""``python -m itm_core.serve``: serve the deployments of ``prefect.yaml`` (what ``itm up`` starts)."""

from itm_core.stack import serve_deployments

if __name__ == "__main__":
    serve_deployments()
