"""The repository root is on sys.path for these tests through pyproject.toml ([tool.pytest.ini_options] pythonpath)."""
