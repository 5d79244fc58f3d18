"""The Retrain page (AppTest): the form, the refused states, a real
running job's live progress behind the same runner the CLI uses, and the
same page on a real local Ray head (tests/conftest.py's `ray_head`)."""

import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cifar import auth, jobs
from cifar import dashboard as d
from cifar.config import PRECISIONS
from cifar.models import REGISTRY
from bench import seed_spread
from tests import fixture_runs
from tests.datasets import make_class_folders
from tests.test_jobs import backend, data, job_seed, no_worker, tiny, wait_for  # noqa: F401 - fixtures

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


@pytest.fixture(autouse=True)
def later_request_state():
    """Requests after a server's first (see fixture_runs.past_first_request)."""
    with fixture_runs.past_first_request():
        yield


def page(secrets: dict | None = None, user: dict | None = None) -> AppTest:
    """The Retrain page, opened through the app as a browser would."""
    at = AppTest.from_file(APP, default_timeout=60)
    # Always set secrets, so a developer's own .streamlit/secrets.toml cannot change the mode.
    at.secrets.update(secrets or {"retrain": {}})
    if user is not None:
        at.user = user
    at.run()
    return at.switch_page("pages/retrain.py").run()


def fill_form(at: AppTest, data_source: str = "keras") -> AppTest:
    at.selectbox(key="retrain_data").set_value(data_source)
    at.number_input(key="retrain_epochs").set_value(1)
    at.number_input(key="retrain_limit").set_value(2)
    at.number_input(key="retrain_val_size").set_value(10)
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch):
    monkeypatch.delenv(auth.TOKEN_ENV, raising=False)


def test_form_offers_the_registry_and_says_retraining_is_open(backend):
    at = page()
    assert not at.exception
    assert at.selectbox(key="retrain_model").value == next(iter(REGISTRY))
    assert len(at.selectbox(key="retrain_model").options) == len(REGISTRY)
    assert at.selectbox(key="retrain_precision").options == list(PRECISIONS)
    assert "keras" in at.selectbox(key="retrain_data").options
    assert "open to anyone" in texts(at.warning)
    assert "No trainings yet" in texts(at.info)
    assert not button(at, "Retrain").disabled


def test_a_wrong_token_is_refused_on_submit_and_on_cancel(no_worker, monkeypatch):
    monkeypatch.setenv(auth.TOKEN_ENV, "s3cret")
    at = page()
    assert not at.warning  # protected: no banner

    at.text_input(key="retrain_token").input("guess")
    button(fill_form(at), "Retrain").click().run()
    assert "Not submitted" in texts(at.error) and "token" in texts(at.error)
    assert no_worker.list_jobs() == []

    at.text_input(key="retrain_token").input("s3cret")
    button(fill_form(at), "Retrain").click().run()
    assert "Queued as job 1" in texts(at.success)
    [job] = no_worker.list_jobs()
    assert job.status == "queued" and job.submitted_by == "team token"
    assert job.config["limit_per_class"] == 2

    at.text_input(key="retrain_token").input("guess")
    at.button(key="cancel-1").click().run()
    assert "Cancel refused" in texts(at.error)
    assert no_worker.get(1).status == "queued"


def test_only_an_allowlisted_account_may_retrain(no_worker):
    secrets = {"auth": {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x"},
               "retrain": {"allowed_emails": ["ana@example.org"]}}
    signed_out = page(secrets, user={"is_logged_in": False})
    assert button(signed_out, "Retrain").disabled
    assert button(signed_out, "Sign in to retrain")

    stranger = page(secrets, user={"is_logged_in": True, "email": "eve@example.org"})
    button(fill_form(stranger), "Retrain").click().run()
    assert "not allowed to retrain" in texts(stranger.error)
    assert no_worker.list_jobs() == []

    member = page(secrets, user={"is_logged_in": True, "email": "ana@example.org"})
    assert "Signed in as ana@example.org" in texts(member.caption)
    button(fill_form(member), "Retrain").click().run()
    assert "Queued as job 1" in texts(member.success)
    assert no_worker.get(1).submitted_by == "ana@example.org"


def test_a_running_job_shows_live_progress_then_a_link_to_its_run(backend, tmp_path):
    # Epochs of 190 one-image batches: the progress file (written about once a
    # second) shows a batch under way for most of the run, not only in the
    # moment between an epoch's last batch and its end.
    data = str(make_class_folders(tmp_path / "more", per_class_train=20))
    job = backend.submit("cnn_baseline", tiny(data, epochs=2, batch_size=1, limit_per_class=20))

    def page_mid_epoch():
        # Rendering takes seconds on a loaded machine: render again until one
        # render lands inside an epoch.
        if not backend.get(job.id).progress.get("batch"):
            return None
        at = page()
        [bar] = at.get("progress")
        return at if "batch" in bar.proto.text else None
    at = wait_for(page_mid_epoch, 90, "the page to show the training mid-epoch")
    [bar] = at.get("progress")
    assert "epoch" in bar.proto.text and "loss" in bar.proto.text
    assert "Job 1" in texts(at.markdown) and "running" in texts(at.markdown)
    assert at.button(key="cancel-1")
    assert "1 queued or running" in texts(at.subheader)

    wait_for(lambda: backend.get(job.id).status == "succeeded", 90, "the job to finish")
    at.run()
    assert not at.get("progress")
    assert at.button(key="open-1").label == "Open run"
    assert "2/2 epochs done" in texts(at.caption)


def test_the_page_only_renders():
    source = (Path(APP).parent / "pages" / "retrain.py").read_text()
    for banned in ("import keras", "from keras", "pathlib", "os.path", "open(", "sqlite3", "subprocess"):
        assert banned not in source, f"pages/retrain.py should ask cifar/ instead of using {banned}"


# ---------------------------------------------------------------- where jobs run, seed sweeps

def test_model_names_come_from_the_registry_without_keras():
    assert jobs.model_choices() == {name: spec.summary for name, spec in REGISTRY.items()}
    fresh = subprocess.run([sys.executable, "-c", "import sys, cifar.jobs; cifar.jobs.model_choices(); "
                            "print('keras' in sys.modules, 'tensorflow' in sys.modules)"],
                           capture_output=True, text=True, check=True, cwd=Path(APP).parent)
    assert fresh.stdout.split() == ["False", "False"]


def test_the_local_backend_says_where_jobs_run_and_seeds_queue_one_job_each(no_worker):
    at = page()
    assert "on this machine, 1 at a time" in texts(at.info)
    assert not [n for n in at.number_input if n.key in ("retrain_cpus", "retrain_gpus")]  # Ray's only
    at.text_input(key="retrain_seeds").input("0-2")
    button(fill_form(at), "Retrain").click().run()
    assert "Queued as job 3" in texts(at.success)
    assert sorted(job_seed(j) for j in no_worker.list_jobs()) == [0, 1, 2]

    at.text_input(key="retrain_seeds").input("a few")
    button(at, "Retrain").click().run()
    assert "0-4 or 0,2,5" in texts(at.error)
    assert len(no_worker.list_jobs()) == 3


def test_ray_misconfigured_or_unreachable_is_one_clear_message(monkeypatch):
    monkeypatch.setenv("CIFAR_JOBS_BACKEND", "ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    at = page()
    assert not at.exception and "needs RAY_ADDRESS" in texts(at.error)

    pytest.importorskip("ray.job_submission", reason="ray is not installed (pip install -r requirements.txt)")
    from tests.conftest import _free_port
    monkeypatch.setenv("RAY_ADDRESS", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    at = page()
    assert not at.exception and "unreachable" in texts(at.error)
    assert at.selectbox(key="retrain_model")  # the form still shows; a submit says why it failed


def test_a_sweep_submitted_on_the_page_runs_on_a_ray_head_and_appears_on_the_models_page(
        ray_head, monkeypatch, tmp_path):
    for name, value in {"CIFAR_JOBS_BACKEND": "ray", "RAY_ADDRESS": ray_head,
                        "CIFAR_JOBS_HEARTBEAT_TIMEOUT": "30"}.items():
        monkeypatch.setenv(name, value)
    backend = jobs.get_backend()
    data = str(make_class_folders(tmp_path / "data"))
    # AppTest cannot type a new option into the data selectbox: offer the tiny set as a past run's source.
    monkeypatch.setattr(jobs, "data_source_choices", lambda: [data, "keras"])
    at = page()
    assert f"Ray cluster at {ray_head}" in texts(at.info) and "of 2 CPUs" in texts(at.info)
    assert at.number_input(key="retrain_cpus").value == 1.0 and at.number_input(key="retrain_gpus").value == 0

    fill_form(at, data).number_input(key="retrain_cpus").set_value(64.0)  # more than the cluster has
    button(at, "Retrain").click().run()
    assert "Queued as job 1" in texts(at.success)
    assert "waiting for free CPUs/GPUs on the cluster" in texts(at.caption)
    at.button(key="cancel-1").click().run()
    assert backend.get(1).status == "cancelled"

    # Two seeds of one CPU each: they run side by side on the 2-CPU head.
    fill_form(at, data).number_input(key="retrain_cpus").set_value(1.0)
    at.text_input(key="retrain_seeds").input("0-1")
    button(at, "Retrain").click().run()
    assert "Queued as job 3" in texts(at.success)
    done = [wait_for(lambda: (j := backend.get(job_id)).status not in jobs.ACTIVE and j, 150, f"job {job_id}")
            for job_id in (2, 3)]
    assert [j.status for j in done] == ["succeeded", "succeeded"], backend.logs(2)
    assert list(seed_spread.seed_table([j.run_id for j in done]).seed) == [0, 1]

    models = AppTest.from_file(APP, default_timeout=60)
    models.run()
    models.switch_page("pages/models.py").run()
    models.toggle(key="all_runs").set_value(True).run()  # both seeds, not only the sidebar's default pick
    table = next(f.value for f in models.dataframe if d.ACCURACY in f.value.columns)
    assert table[table[d.SOURCE] == d.MEASURED_SOURCE][d.MODEL].tolist() == ["cnn_baseline", "cnn_baseline"]


# ---------------------------------------------------------------- robustness evaluations

def test_the_robustness_form_queues_an_evaluation_of_a_chosen_run_with_the_same_rights(
        no_worker, tmp_path, monkeypatch):
    from cifar import sample_runs
    elsewhere = fixture_runs.make_run("cnn_baseline", seed=1)  # trained on a copy not on this machine
    monkeypatch.setitem(sample_runs.SAMPLE_DATA, "source", str(tmp_path))
    here = fixture_runs.make_run("cnn_regularized", seed=2, minutes_after_start=60)
    monkeypatch.setenv(auth.TOKEN_ENV, "s3cret")
    at = page()
    assert at.number_input(key="robustness_images").value == jobs.DEFAULT_ROBUSTNESS_IMAGES

    at.selectbox(key="robustness_run").set_value(here.run_id)
    at.number_input(key="robustness_images").set_value(50)
    button(at, "Evaluate robustness").click().run()
    assert "Not submitted" in texts(at.error) and "token" in texts(at.error)
    assert no_worker.list_jobs() == []

    at.text_input(key="retrain_token").input("s3cret")
    at.selectbox(key="robustness_run").set_value(elsewhere.run_id)
    button(at, "Evaluate robustness").click().run()
    assert "/data/cifar10-jpeg" in texts(at.error) and "not on this machine" in texts(at.error)

    at.selectbox(key="robustness_run").set_value(here.run_id)
    button(at, "Evaluate robustness").click().run()
    assert "Queued as job 1" in texts(at.success)
    [job] = no_worker.list_jobs()
    assert (job.kind, job.run_id, job.payload, job.submitted_by) == ("robustness", here.run_id, {"images": 50},
                                                                     "team token")
    assert "robustness of `cnn_regularized`, 50 images" in texts(at.markdown)

    with no_worker._transaction() as con:  # as the worker records a finished evaluation
        con.execute("UPDATE jobs SET status = 'succeeded', last_progress = ? WHERE id = 1",
                    ('{"clean_accuracy": 0.8, "mean_corruption_accuracy": 0.6, "images": 50}',))
    at.run()
    assert at.button(key="open-1").label == "Open robustness"
    assert "mean corruption accuracy 0.6000 on 50 images" in texts(at.caption)
