import time

from assets.logic import profile


def test_steps_are_timed_without_the_steps_inside_them_and_add_up():
    with profile.profiled() as seconds:
        with profile.step("outer"):
            time.sleep(0.05)
            with profile.step("inner"):
                time.sleep(0.1)
        with profile.step("inner"):  # met again: adds up
            time.sleep(0.05)
    assert set(seconds) == {"outer", "inner"}
    assert 0.04 <= seconds["outer"] < 0.1  # its own 0.05 s, not the 0.1 s timed inside it
    assert 0.14 <= seconds["inner"] < 0.25


def test_a_step_outside_a_profile_records_nothing_and_profiles_do_not_leak():
    with profile.step("alone"):
        pass
    with profile.profiled() as first, profile.step("a"):
        pass
    with profile.profiled() as second, profile.step("b"):
        pass
    assert set(first) == {"a"} and set(second) == {"b"}
