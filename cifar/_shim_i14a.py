"""TEMPORARY (helper i14b): i14a's job contract until it lands in main; removed on merge."""
from cifar import artifacts, jobs


def prepare(model, overrides):
    argv, key = jobs.prepare_request(model, overrides)
    return {"argv": argv}, key


def make_job(**fields):
    config = fields.pop("config")
    return jobs.Job(args=config.get("argv", []), **fields)


def training_command(job):
    if job.attempt > 0 and artifacts.work_dir(job.run_id).exists():
        return ["resume", job.run_id, "--quiet"]
    return job.args[:2] + ["--run-id", job.run_id, "--quiet"] + job.args[2:]
