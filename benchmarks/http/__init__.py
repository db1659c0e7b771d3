"""HTTP benchmark of the Scoreline server against a bare Starlette floor and a plain LightGBM app."""
