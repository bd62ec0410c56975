import os

from fastapi import Depends, FastAPI

from ratewall import AsyncRateLimiter, Policy
from ratewall.http import Header
from ratewall.integrations.fastapi import RateLimit, install

# This example's own variable (its tests set it): ratewall itself reads no environment.
STORE = os.environ.get("RATEWALL_STORE", "redis://127.0.0.1:6379/0")
limiter = AsyncRateLimiter({"login": Policy(5, "1m")}, store=STORE, timeout=0.5)
login_limit = RateLimit(limiter, "login", identity=Header("X-User-ID"))

app = FastAPI()
install(app)  # refusals answer with the middleware's problem+json body


@app.post("/login", dependencies=[Depends(login_limit)])
async def login() -> dict[str, bool]:
    return {"ok": True}
