"""scheduler_svc: runs user scripts as tasks on local processes or Ray (``aiplatform.v1.SchedulerService``)."""
