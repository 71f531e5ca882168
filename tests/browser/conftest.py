"""Browser tests: Debian's chromium driven by Playwright (sync API) against real daphne.

Each test gets its own daphne (``start_daphne``, sharing the test database), its own
fake LLM and its own chromium, and logs in through the real login form. Without
/usr/bin/chromium the tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import importlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from django.conf import global_settings
from django.utils.module_loading import import_string

from tests.fixtures import close_all_connections, require

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PASSWORD = "correct-horse-battery"
FINAL = ("done", "error", "cancelled", "timeout")
TIMEOUT_MS = 20_000


@pytest.fixture(autouse=True)
def _close_db_connections() -> Iterator[None]:
    """The suite's async twin of this fixture cannot run here: while Playwright lives,
    the thread counts as inside a running event loop. Same job, synchronously."""
    yield
    close_all_connections()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def browser() -> Iterator[Any]:
    """A chromium of its own per test: Playwright's loop must be gone before the next
    test's async fixtures run."""
    require(
        CHROMIUM.exists(),
        f"{CHROMIUM} is missing: apt-get install -y chromium (playwright install cannot "
        "download here)",
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class ChatApp:
    """The app under test: one daphne, one user, and helpers that act as that user."""

    server: Any
    user: Any
    browser: Any
    pages: list[Any] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.http_url

    def new_context(self, **options: Any) -> Any:
        """A browser profile (cookies of its own), logged in through the login form."""
        context = self.browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        page = self.new_page(context)
        page.goto(f"{self.url}/accounts/login/")
        page.fill("#id_username", self.user.username)
        page.fill("#id_password", PASSWORD)
        page.click("form.login button[type=submit]")
        page.wait_for_url(f"{self.url}/")
        page.close()  # the session cookie stays with the context
        return context

    def new_page(self, context: Any) -> Any:
        """A tab that records dialogs (and dismisses them) and uncaught script errors."""
        page = context.new_page()
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.pages.append(page)
        return page

    def start_conversation(self, page: Any) -> str:
        """Click "New chat" on the home page; return the conversation page's URL."""
        page.goto(f"{self.url}/")
        page.click("#new-chat")
        page.wait_for_url(re.compile(r"/conversations/\d+/$"))
        wait_live(page)
        return page.url

    def open(self, page: Any, url: str) -> None:
        page.goto(url)
        wait_live(page)


def wait_live(page: Any) -> None:
    page.wait_for_selector("#connection[data-state=open]")


def send_prompt(page: Any, text: str) -> None:
    """Type into the composer and press Enter, as a user does."""
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def last_answer_id(page: Any, *, after: int = 0) -> int:
    """The id of the newest assistant message, once there is one newer than ``after``."""
    page.wait_for_function(
        "(after) => [...document.querySelectorAll('li.message-assistant')]"
        ".some((li) => Number(li.dataset.messageId) > after)",
        arg=after,
    )
    return int(page.locator("li.message-assistant").last.get_attribute("data-message-id"))


def answer(page: Any, message_id: int) -> Any:
    return page.locator(f"#message-{message_id}")


def wait_status(page: Any, message_id: int, *statuses: str, timeout: float = TIMEOUT_MS) -> str:
    """Wait until the message shows one of ``statuses`` (default: any final one)."""
    wanted = statuses or FINAL
    selector = ", ".join(f"#message-{message_id}[data-status={status}]" for status in wanted)
    page.wait_for_selector(selector, timeout=timeout)
    return answer(page, message_id).get_attribute("data-status")


def shown_text(page: Any, message_id: int) -> str | None:
    """The raw text the page holds for a message (what its HTML is rendered from)."""
    return page.evaluate("(id) => window.chat.textOf(id)", message_id)


def wait_for_text(page: Any, message_id: int, needle: str) -> None:
    page.wait_for_function(
        "([id, needle]) => (window.chat.textOf(id) || '').includes(needle)",
        arg=[message_id, needle],
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def sentences(count: int) -> str:
    """A reply whose sentences are all different, to spot one twice or missing."""
    return " ".join(f"Sentence {n} of the answer." for n in range(1, count + 1))


@cache
def server_password_hash() -> str:
    """PASSWORD's hash made by the hasher the daphne servers use.

    This process may hash with a fast test-only hasher (tests/conftest.py sets one); the
    servers run the project's real settings, which could not verify that. Computed once.
    """
    project = importlib.import_module(os.environ["DJANGO_SETTINGS_MODULE"])
    hasher = import_string(
        getattr(project, "PASSWORD_HASHERS", global_settings.PASSWORD_HASHERS)[0]
    )()
    return hasher.encode(PASSWORD, hasher.salt())


@pytest.fixture
def chat_app(
    request: pytest.FixtureRequest,
    browser: Any,
    start_daphne: Any,
    fake_llm: Any,
    django_user_model: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ChatApp]:
    """daphne with the fake LLM, a user, and a browser, checked for stray errors."""
    fake_llm.token_delay = 0.03
    server = start_daphne(llm_base_url=fake_llm.base_url, **getattr(request, "param", {}))
    # Playwright's sync API marks its event loop as running between calls, so Django
    # refuses the test's ORM calls ("SynchronousOnlyOperation"). Lift that guard for this
    # process only, and only now: daphne, started above, keeps it.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    user = django_user_model.objects.create(username="ann", password=server_password_hash())
    app = ChatApp(server=server, user=user, browser=browser)
    yield app
    if request.node.stash.get(FAILED, False) or os.environ.get("KEEP_ARTIFACTS"):
        # Keep what the browser showed and what the server said, for the post-mortem.
        ARTIFACTS.mkdir(exist_ok=True)
        for index, page in enumerate(app.pages):
            if not page.is_closed():
                page.screenshot(path=ARTIFACTS / f"{request.node.name}-{index}.png")
        (ARTIFACTS / f"{request.node.name}-daphne.log").write_text(server.log())
    # Close the sockets before daphne stops, as a user leaving would.
    for context in {page.context for page in app.pages}:
        context.close()
    # While Playwright runs, Django keeps this thread's connections per asyncio context
    # (asgiref's Local): close them now, in the context the test used them in.
    close_all_connections()
    assert app.page_errors == [], f"uncaught script errors: {app.page_errors}"
