"""The load generator's own ceiling: Locust against a trivial endpoint (a producer's
`GET /healthz`, which does no vote work), same user count and no wait. When a producer's
saturation figure from Locust is close to this, Locust was the limit, not the producer.

    locust -f locust/ceiling_locustfile.py --headless -u 32 -r 32 -t 10s --host http://127.0.0.1:8081
"""
from locust import FastHttpUser, task


class HealthzProbe(FastHttpUser):
    @task
    def healthz(self):
        self.client.get("/healthz")
