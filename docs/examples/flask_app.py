import os

from flask import Flask

from ratewall import Policy, RateLimiter
from ratewall.http import Header
from ratewall.integrations.flask import FlaskRateLimit

# This example's own variable (its tests set it): ratewall itself reads no environment.
STORE = os.environ.get("RATEWALL_STORE", "redis://127.0.0.1:6379/0")
limiter = RateLimiter({"login": Policy(5, "1m")}, store=STORE, timeout=0.5)

app = Flask(__name__)
limits = FlaskRateLimit(app, limiter=limiter)


@app.post("/login")
@limits.limit("login", identity=Header("X-User-ID"))
def login() -> dict[str, bool]:
    return {"ok": True}
