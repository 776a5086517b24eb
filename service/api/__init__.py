"""HTTP routers; each reads what it needs from ``request.app.state`` (set by ``create_app``)."""
