"""One status module for the engine and the thin reaper: the same snapshot shape and
the same request verbs whoever is PID 1."""

from fsm_init.core import reaper, status

from .fakes import FakeSystem, Harness, close_loop, make_settings


def thin_reaper() -> reaper.Reaper:
    state = {"pid": 100, "by_session": True, "started": 0.0, "target": None, "run_count": 1, "control_fd": None,
             "quiet": False, "supporting": {}, "proof": 5, "last_transition": {}}
    return reaper.Reaper(FakeSystem(), make_settings(), state)


def test_the_engine_and_the_thin_reaper_answer_status_in_one_shape():
    h = Harness(environ={"SRVNAME": "nothing-here"})
    thin = thin_reaper()
    try:
        assert list(h.request("status")["status"]) == list(thin.handle_request({"verb": "status"})["status"])
    finally:
        close_loop(thin.loop)
        h.close()


def test_the_thin_reaper_refuses_what_it_cannot_do_in_its_own_words():
    thin = thin_reaper()
    try:
        assert thin.handle_request({"verb": "frobnicate"}) == {"ok": False, "message": "cannot frobnicate during handover"}
        assert thin.handle_request({"verb": "health", "name": 7}) == {
            "ok": False, "message": "no /etc/service daemon named 7: there are none"}
        assert thin.handle_request({"verb": "live"}) == {"ok": True, "message": "fsm-init answers (handover)"}
    finally:
        close_loop(thin.loop)


def test_a_transition_entry_counts_restarts_from_runs():
    entry = status.transition(12.34567, "start", "watch", "spawned", {"g": True}, "why", 3)
    assert entry == {"time": 12.346, "from": "start", "to": "watch", "trigger": "spawned", "guards": {"g": True},
                     "cause": "why", "restarts": 2}
