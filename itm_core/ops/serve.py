"""``python -m itm_core.ops.serve``: serve the deployments of ``prefect.yaml`` (what ``itm up`` starts)."""

from itm_core.ops.stack import serve_deployments

if __name__ == "__main__":
    serve_deployments()
