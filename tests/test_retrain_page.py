"""The Retrain page (AppTest): the form, the refused states, and a real
running job's live progress, behind the same runner the CLI uses."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cifar import auth
from cifar.config import PRECISIONS
from cifar.models import REGISTRY
from tests import fixture_runs
from tests.datasets import make_class_folders
from tests.test_jobs import backend, data, no_worker, tiny, wait_for  # noqa: F401 - fixtures

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
