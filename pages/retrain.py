"""Retrain: queue a training, or a robustness evaluation of a run, from the
browser and watch it run.

Everything happens in `cifar.jobs` and its backend (`cifar.jobs_local`: this
machine, one training at a time by default; `cifar.jobs_ray`: a Ray cluster,
as many as its CPUs/GPUs fit) and `cifar.auth` (who may submit, cancel and
resume); this page renders the form, where jobs run, and the job list,
which refreshes itself every few seconds.
Every action checks rights on the server first; disabling a button is only
a courtesy.
"""

from __future__ import annotations

import time

import streamlit as st

from cifar import auth, jobs
from cifar.config import PRECISIONS
from cifar.errors import CifarError
from pages import _common

REFRESH_SECONDS = 3
TOKEN_KEY = "retrain_token"
MESSAGE_KEY = "retrain_message"
STATUS_ICONS = {"queued": ":material/schedule:", "running": ":material/directions_run:",
                "succeeded": ":material/check_circle:", "failed": ":material/error:",
                "cancelled": ":material/cancel:", "lost": ":material/help:"}

policy = auth.current_policy()


def store_unreadable(what: str, exc: Exception) -> str:
    """The message for a job store that fails in a way the backend did not foresee."""
    return (f"{what}: the job records cannot be read ({exc.__class__.__name__}: {exc}). Runs already trained "
            "are unaffected; whoever runs this server can move the damaged jobs database aside to start a new "
            "job list.")


def submit_or_say_why(submit):
    """`submit(who)` once the rights are checked; its result, or None with the
    reason shown when it was refused or failed."""
    try:
        return submit(check_rights())
    except auth.NotAllowed as exc:
        st.error(f"Not submitted: {exc}", icon=":material/lock:")
    except CifarError as exc:
        st.error(f"Not submitted: {exc}")
    except Exception as exc:  # noqa: BLE001 - see job_list
        st.error(store_unreadable("Not submitted", exc), icon=":material/database:")
    return None


def say_queued(job, what: str) -> None:
    if job.reused:
        st.info(f"The same {what} is already job {job.id} ({job.status}); no second job was queued.")
    else:
        st.success(f"Queued as job {job.id}.")


def check_rights() -> str:
    """Who is acting; raises auth.NotAllowed. Every submit, cancel and resume calls it."""
    return auth.authorize(policy, auth.current_user(), st.session_state.get(TOKEN_KEY))


def ago(timestamp: float | None) -> str:
    if not timestamp:
        return "never"
    seconds = int(time.time() - timestamp)
    if seconds < 120:
        return f"{seconds} s ago"
    return f"{seconds // 60} min ago" if seconds < 7200 else time.strftime("%d %b %H:%M",
                                                                           time.localtime(timestamp))


# ---------------------------------------------------------------- who may retrain

_common.start_page("Retrain")
try:
    backend = jobs.get_backend()
except CifarError as exc:  # e.g. CIFAR_JOBS_BACKEND=ray without RAY_ADDRESS, or without ray installed
    st.error(f"Retraining is unavailable: {exc}", icon=":material/cloud_off:")
    st.stop()
capacity = backend.capacity()
st.caption("Queue a training. Jobs keep running when the browser closes; a finished run appears on every page.")
if capacity.error:
    st.error(capacity.error, icon=":material/cloud_off:")
else:
    st.info(capacity.summary, icon=":material/dns:")
if policy.banner():
    st.warning(policy.banner(), icon=":material/lock_open:" if policy.mode == "open" else ":material/lock:")
if policy.needs_login:
    user = auth.current_user()
    if user.get("is_logged_in"):
        st.caption(f"Signed in as {user.get('email') or user.get('name') or 'an unnamed user'}.")
        st.button("Sign out", on_click=st.logout)
    else:
        st.info("Browsing needs no sign-in; retraining does.", icon=":material/key:")
        st.button("Sign in to retrain", on_click=st.login, type="primary")
elif policy.needs_token:
    st.text_input("Team token", type="password", key=TOKEN_KEY,
                  help="Retraining needs the team's token; ask the team for it. Browsing needs nothing.")

# ---------------------------------------------------------------- the form

MODELS = jobs.model_choices()
with st.form("retrain"):
    model = st.selectbox("Model", list(MODELS), key="retrain_model",
                         format_func=lambda name: f"{name}: {MODELS[name]}")
    left, right = st.columns(2)
    epochs = left.number_input("Epochs", key="retrain_epochs", min_value=1, value=None, step=1,
                               placeholder="the recipe's")
    data = right.selectbox("Data source", jobs.data_source_choices(), key="retrain_data",
                           accept_new_options=True,
                           help="A path on the training machine (CIFAR-10 archive, batches folder or "
                                "class-folder tree), or 'keras' to download. Type to enter a new one.")
    limit = left.number_input("Images per class (subset)", key="retrain_limit", min_value=0, value=0,
                              step=100, help="0 trains on every image (5,000 per class).")
    val_size = right.number_input("Validation images", key="retrain_val_size", min_value=0, value=None,
                                  step=100, placeholder="the recipe's",
                                  help="Held out of the training images. Empty: the recipe's (5,000; none "
                                       "for fast_cnn), or a tenth of a subset.")
    seeds = left.text_input("Seeds", key="retrain_seeds", value="0",
                            help="One seed, or several to queue one job per seed: 0-4 or 0,2,5 "
                                 "(compare them with python -m bench.seed_spread).")
    precision = right.selectbox("Precision", PRECISIONS, key="retrain_precision")
    if backend.name == "ray":
        cpus = left.number_input("CPUs per job", key="retrain_cpus", min_value=0.0, value=1.0, step=1.0,
                                 help="Reserved on the cluster while the job runs; jobs run side by side "
                                      "while their CPUs and GPUs fit.")
        gpus = right.number_input("GPUs per job", key="retrain_gpus", min_value=0.0, value=0.0, step=1.0)
    else:
        cpus, gpus = 1.0, 0.0  # the local backend runs max_concurrent jobs at a time instead
    signed_out = policy.needs_login and not auth.current_user().get("is_logged_in")
    submitted = st.form_submit_button("Retrain", type="primary", disabled=signed_out)

if submitted:
    overrides = {"data": data, "epochs": epochs, "limit_per_class": limit or None, "val_size": val_size,
                 "precision": precision}
    queued = submit_or_say_why(lambda who: jobs.submit_seeds(
        backend, model, overrides, jobs.parse_seeds(seeds), submitted_by=who,
        resources=jobs.Resources(cpus=cpus, gpus=gpus)))
    for job in queued or []:
        say_queued(job, "training")

# ---------------------------------------------------------------- a robustness evaluation

def run_choices() -> list[str]:
    """The sidebar's selected runs first, then every other visible run, newest first."""
    chosen = _common.selected()
    return chosen + [run_id for run_id, _ in reversed(_common.visible_runs()) if run_id not in chosen]


RUN_LABELS = _common.labels()
with st.form("robustness"):
    st.markdown("**Robustness evaluation** of a run: its accuracy under every CIFAR-10-C corruption and "
                "severity, added to the run for the Robustness page.")
    left, right = st.columns(2)
    evaluated = left.selectbox("Run", run_choices(), key="robustness_run", index=0,
                               format_func=lambda run_id: RUN_LABELS.get(run_id, run_id),
                               placeholder="no runs yet: train one first")
    images = right.number_input("Test images", key="robustness_images", min_value=1, max_value=10_000,
                                value=jobs.DEFAULT_ROBUSTNESS_IMAGES, step=100,
                                help="A seeded, class-stratified subset of the test set (10,000 for all). "
                                     "1,000 images give each accuracy to about ±0.03.")
    evaluate = st.form_submit_button("Evaluate robustness", disabled=signed_out)

if evaluate:
    def evaluate_run(who: str):
        if evaluated is None:
            raise CifarError("there is no run to evaluate yet; train one first")
        return backend.submit_robustness(evaluated, int(images), submitted_by=who)
    job = submit_or_say_why(evaluate_run)
    if job is not None:
        say_queued(job, "evaluation")

# ---------------------------------------------------------------- the jobs

ACTIONS = {"Cancel": lambda job_id: backend.cancel(job_id, wait=3), "Resume": backend.resume}


def act(label: str, job_id: int) -> None:
    """Button callback (runs on the server before the rerun): check rights, then act."""
    try:
        check_rights()
        ACTIONS[label](job_id)
    except auth.NotAllowed as exc:
        st.session_state[MESSAGE_KEY] = f"{label} refused: {exc}"
    except CifarError as exc:
        st.session_state[MESSAGE_KEY] = str(exc)
    except Exception as exc:  # noqa: BLE001 - see job_list
        st.session_state[MESSAGE_KEY] = store_unreadable(f"{label} failed", exc)


PAGE_OF_RESULT = {"train": ("Open run", "pages/run_details.py"),
                  "robustness": ("Open robustness", "pages/robustness.py")}


def select_run(run_id: str) -> None:
    """Button callback: the new run goes first in the selection every page shares."""
    chosen = [r for r in st.session_state.get(_common.SELECTION_KEY, []) if r != run_id]
    st.session_state[_common.SELECTION_KEY] = [run_id, *chosen]


def log_text(job: jobs.Job) -> str:
    try:
        return backend.logs(job.id, lines=40) or job.log_tail or "(no output yet)"
    except CifarError as exc:  # e.g. the Ray cluster went away between two renders
        return job.log_tail or f"(the log cannot be read now: {exc})"


def show_job(job: jobs.Job) -> None:
    with st.container(border=True):
        head, buttons = st.columns([4, 1])
        cancelling = " (cancelling)" if job.cancel_requested and job.active else ""
        who = f" by {job.submitted_by}" if job.submitted_by else ""
        what = f"robustness of `{job.model}`, {job.payload.get('images', 0):,} images" \
            if job.kind == "robustness" else f"`{job.model}`"
        head.markdown(f"{STATUS_ICONS.get(job.status, '')} **Job {job.id}** · {what} · "
                      f"**{job.status}**{cancelling} · queued {ago(job.created_at)}{who}")
        head.caption(f"run `{job.run_id}` · attempt {job.attempt}")
        if job.active:
            buttons.button("Cancel", key=f"cancel-{job.id}", on_click=act, args=("Cancel", job.id))
        if job.status in ("lost", "failed"):
            buttons.button("Resume", key=f"resume-{job.id}", on_click=act, args=("Resume", job.id),
                           help="Start the evaluation again, as a new attempt" if job.kind == "robustness"
                           else "Continue from the last completed epoch, as a new attempt")
        label, result_page = PAGE_OF_RESULT.get(job.kind, PAGE_OF_RESULT["train"])
        if job.status == "succeeded" and buttons.button(label, key=f"open-{job.id}", type="primary",
                                                        on_click=select_run, args=(job.run_id,)):
            st.switch_page(result_page)

        if job.status == "running":
            st.progress(job.fraction_done, text=job.describe_progress())
            if job.progress.get("updated_at"):
                st.caption(f"last heartbeat {ago(job.heartbeat_at)}")
        elif job.status == "queued":
            st.caption("waiting for free CPUs/GPUs on the cluster" if backend.name == "ray"
                       else "waiting for a free slot")
        elif job.progress and job.status != "cancelled":
            st.caption(job.describe_progress())
        if job.error and job.status in ("failed", "lost"):
            st.error(job.error)
        with st.expander("Log" if job.active else "Log tail", expanded=job.status in ("failed", "lost")):
            st.code(log_text(job), language=None, wrap_lines=True)


@st.fragment(run_every=REFRESH_SECONDS)
def job_list() -> None:
    if message := st.session_state.pop(MESSAGE_KEY, None):
        st.error(message, icon=":material/lock:" if "refused" in message else None)
    try:
        found = backend.list_jobs(limit=20)
    except CifarError as exc:  # e.g. the Ray cluster went away
        st.error(f"Cannot list the jobs: {exc}", icon=":material/cloud_off:")
        return
    except Exception as exc:  # noqa: BLE001 - a damaged job record or database; this fragment
        # reruns alone every few seconds, outside streamlit_app.py's friendly_errors
        st.error(store_unreadable("Cannot list the jobs", exc), icon=":material/database:")
        return
    st.subheader(f"Jobs ({sum(job.active for job in found)} queued or running)")
    if not found:
        st.info("No trainings yet. Fill in the form above and press **Retrain**.")
    for job in found:
        show_job(job)


job_list()
