"""The Celery app of qpipe's step workers: dagster-celery's task on the broker ``QPIPE_CELERY_BROKER``.

A run whose Definitions were loaded with ``QPIPE_EXECUTOR=celery`` sends each step to a queue:
checkpoint steps to ``gpu`` (their ``dagster-celery/queue`` tag), every other step to ``dagster``.
Workers, on any machine that has the code, the Dagster instance's storage and the warehouse:

    celery -A qpipe.deploy.celery_app worker -Q dagster -c 2     # ingest, features, predictions, reports
    celery -A qpipe.deploy.celery_app worker -Q gpu -c 1         # checkpoints: one per GPU
"""

from dagster_celery.make_app import make_app_with_task_routes
from dagster_celery.tasks import create_task
from kombu import Queue

from qpipe.settings import get_settings

QUEUES = ("dagster", "gpu")


def make_app():
    broker = get_settings().celery_broker
    app = make_app_with_task_routes(task_routes={}, app_args={"broker": broker, "backend": broker})
    # Each queue takes the routing keys dagster-celery gives its tasks ("<queue>.execute_plan").
    app.conf.task_queues = [Queue(q, routing_key=f"{q}.execute_plan", queue_arguments={"x-max-priority": 10})
                            for q in QUEUES]
    app.conf.task_default_queue = "dagster"
    app.conf.worker_prefetch_multiplier = 1  # a long checkpoint step must not hold a queued step hostage
    return app


app = make_app()
execute_plan = create_task(app)
