"""The chat page in a real browser: headless Chromium (the system's) driven by Playwright.

The page is the one `rat serve --web` ships; the browser loads it over HTTP,
opens its WebSocket, and the test talks to it from plain TCP clients.  A
screenshot of each page the tests look at is saved under `test-artifacts/`.

Chromium comes from the system (Debian's `chromium` at /usr/bin/chromium);
Playwright only drives it (no `playwright install`).  Without it the tests
are skipped, saying so.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import ServerProcess, assert_silent, recv_lines

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)",
    ),
    pytest.mark.timeout(120),
]

StartServer = Callable[..., ServerProcess]
WEB = re.compile(r"web (\S+):(\d+)")
WAIT_MS = 10_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Factory: a new page in a context of its own (viewport optional); all closed at the end."""
    contexts = []

    def open_page(width: int = 1000, height: int = 700) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: pytest.fail(f"script error on the page: {error}"))
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def tcp_clients() -> Iterator[Callable[[ServerProcess], socket.socket]]:
    opened: list[socket.socket] = []

    def connect(server: ServerProcess) -> socket.socket:
        sock = socket.create_connection((server.host, server.port), timeout=10)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


Setup = Callable[..., tuple[ServerProcess, Page, socket.socket]]


@pytest.fixture
def page_and_tcp(
    rat_server: StartServer,
    pages: Callable[..., Page],
    tcp_clients: Callable[[ServerProcess], socket.socket],
) -> Setup:
    """Factory: a `rat serve --web` server, a page on it and a TCP client, both members."""

    def setup(
        width: int = 1000, height: int = 700, sync: bool = True
    ) -> tuple[ServerProcess, Page, socket.socket]:
        server = rat_server("--web", "0")
        page = open_chat(pages(width, height), server)
        tcp = tcp_clients(server)
        if sync:
            members_synced(tcp, [page])
        return server, page, tcp

    return setup


def web_url(server: ServerProcess) -> str:
    match = WEB.search(server.stderr)
    assert match, server.stderr
    return f"http://127.0.0.1:{match.group(2)}/"


def open_chat(page: Page, server: ServerProcess) -> Page:
    page.goto(web_url(server))
    expect(page.locator("#state")).to_have_attribute("data-state", "online", timeout=WAIT_MS)
    return page


def lines_on(page: Page) -> list[str]:
    return page.locator("#log .line:not(.local)").all_text_contents()


def wait_for_line(page: Page, text: str, timeout: int = WAIT_MS) -> None:
    """Until a line reads exactly `text` (as text: whatever markup it holds)."""
    page.wait_for_function(
        "text => [...document.querySelectorAll('#log .line')].some(e => e.textContent === text)",
        arg=text,
        timeout=timeout,
        polling=100,  # not every frame: the page under test needs the frames
    )


def send_from_page(page: Page, text: str) -> None:
    page.fill("#line", text)
    page.press("#line", "Enter")


def members_synced(tcp: socket.socket, pages: list[Page]) -> None:
    """A probe line from `tcp` reaches every page: they are all members now."""
    tcp.sendall(b"__sync__\n")
    for page in pages:
        wait_for_line(page, "__sync__")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


# ----------------------------------------------------------------------------- tests


def test_page_and_tcp_talk_both_ways(page_and_tcp: Setup) -> None:
    _, page, tcp = page_and_tcp()

    send_from_page(page, "typed in the browser")
    assert recv_lines(tcp, 1) == [b"typed in the browser\n"]
    expect(page.locator("#line")).to_have_value("")  # the input is cleared once sent

    tcp.sendall(b"hello from tcp\n\xff\xfe not utf-8\n")
    wait_for_line(page, "hello from tcp")
    wait_for_line(page, "\ufffd\ufffd not utf-8")  # a binary line, shown with U+FFFD
    expect(page.locator("#log .line.bin")).to_have_count(1)
    screenshot(page, "web-page.png")


def test_two_pages_talk(rat_server: StartServer, pages: Callable[..., Page]) -> None:
    server = rat_server("--web", "0")
    # "online" means the page got the 101, and the server joins a WebSocket
    # in the same turn as it sends the 101: both are members now.
    alice, bob = open_chat(pages(), server), open_chat(pages(), server)
    send_from_page(alice, "hi bob")
    wait_for_line(bob, "hi bob")
    send_from_page(bob, "hi alice")
    wait_for_line(alice, "hi alice")
    assert lines_on(alice) == ["hi bob", "hi alice"]  # its own line, then bob's
    assert lines_on(bob) == ["hi bob", "hi alice"]


def test_markup_in_a_line_is_shown_as_text(page_and_tcp: Setup) -> None:
    _, page, tcp = page_and_tcp()
    evil = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold</b>'
    tcp.sendall(evil.encode() + b"\n")
    wait_for_line(page, evil)
    assert page.evaluate("window.pwned") is None
    assert page.locator("#log script, #log img, #log b").count() == 0


def test_the_page_reconnects_after_a_server_restart(
    rat_server: StartServer,
    pages: Callable[..., Page],
    tcp_clients: Callable[[ServerProcess], socket.socket],
) -> None:
    first = rat_server("--web", "0")
    url = web_url(first)
    port = url.rsplit(":", 1)[1].strip("/")
    page = open_chat(pages(), first)
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    expect(page.locator("#state")).to_have_attribute("data-state", "offline", timeout=WAIT_MS)
    wait_for_line(page, "disconnected (shutdown)")  # the 1001's reason, shown to the user

    second = rat_server("--web", f"127.0.0.1:{port}")  # the same port
    expect(page.locator("#state")).to_have_attribute("data-state", "online", timeout=20_000)
    tcp = tcp_clients(second)
    members_synced(tcp, [page])
    send_from_page(page, "back again")
    assert recv_lines(tcp, 1) == [b"back again\n"]


def test_a_fast_stream_keeps_the_last_lines(page_and_tcp: Setup) -> None:
    _, page, tcp = page_and_tcp()
    # More lines than the page keeps, in one burst.  (Chromium itself takes
    # a few seconds for that many messages on a busy machine: hence the wait.)
    total = 8000
    tcp.sendall(b"".join(b"line %05d\n" % i for i in range(total)))
    wait_for_line(page, f"line {total - 1:05d}", timeout=60_000)
    count = page.locator("#log .line").count()
    assert count == 5000  # the last few thousand only
    # The newest line is the last one on screen, and the view follows it.
    assert page.locator("#log .line").last.text_content() == f"line {total - 1:05d}"
    assert page.evaluate(
        "(() => { const log = document.getElementById('log');"
        " return log.scrollHeight - log.scrollTop - log.clientHeight < 40; })()"
    )


def test_a_phone_screen(page_and_tcp: Setup) -> None:
    _, page, tcp = page_and_tcp(width=390, height=844)
    tcp.sendall(b"a long line without spaces: " + b"x" * 300 + b"\n")
    wait_for_line(page, "a long line without spaces: " + "x" * 300)
    # Nothing is wider than the screen, and the input line is on it.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("#line", "#go"):
        box = page.locator(selector).bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
        assert box["y"] >= 0 and box["y"] + box["height"] <= 844, selector
    screenshot(page, "web-page-phone.png")


GREETING = (  # rat.chat.session, `Chat._enter`
    "* welcome, you are {} in #lobby ({} here);"
    " /nick NAME to change your nick, /help for the commands"
)


def test_chat_mode_shows_nick_and_room_and_offers_commands(
    rat_server: StartServer,
    pages: Callable[..., Page],
    tcp_clients: Callable[[ServerProcess], socket.socket],
) -> None:
    """A real chat server (`--chat --web`): the page follows its greeting and its replies."""
    server = rat_server("--chat", "--web", "0")
    page = open_chat(pages(), server)  # the first client: guest1
    wait_for_line(page, GREETING.format("guest1", 1))
    expect(page.locator("#where")).to_be_visible()
    expect(page.locator("#nick")).to_have_text("guest1")
    expect(page.locator("#room")).to_have_text("#lobby")

    page.fill("#line", "/")
    hints = page.locator("#hints button")
    expect(hints).to_have_count(5)
    names = hints.evaluate_all("buttons => buttons.map(b => b.firstChild.textContent)")
    assert names == ["/nick", "/join", "/who", "/rooms", "/help"]
    page.fill("#line", "/j")
    expect(hints).to_have_count(1)
    page.press("#line", "Tab")
    expect(page.locator("#line")).to_have_value("/join #")

    send_from_page(page, "/nick bob")
    wait_for_line(page, "* you are now bob")
    expect(page.locator("#nick")).to_have_text("bob")

    # An nc-style client, in #kitchen first.
    tcp = tcp_clients(server)
    assert recv_lines(tcp, 1) == [GREETING.format("guest2", 2).encode() + b"\n"]
    wait_for_line(page, "* guest2 joined #lobby")
    tcp.sendall(b"/join #kitchen\n")
    assert recv_lines(tcp, 1) == [b"* you joined #kitchen (1 here)\n"]
    wait_for_line(page, "* guest2 left #lobby")
    expect(page.locator("#room")).to_have_text("#lobby")  # someone else's move

    # Rooms ignore case: the page shows the room the server names.
    send_from_page(page, "/join #Kitchen")
    wait_for_line(page, "* you joined #kitchen (2 here)")
    expect(page.locator("#room")).to_have_text("#kitchen")
    assert recv_lines(tcp, 1) == [b"* bob joined #kitchen\n"]

    # What the page sends is raw input; what it shows for it is what the others see.
    send_from_page(page, "hello")
    assert recv_lines(tcp, 1) == [b"<bob> hello\n"]
    wait_for_line(page, "<bob> hello")
    tcp.sendall(b"hi bob, the kettle is on\n")
    wait_for_line(page, "<guest2> hi bob, the kettle is on")
    send_from_page(page, "/me waves")
    assert recv_lines(tcp, 1) == [b"* bob waves\n"]
    wait_for_line(page, "* bob waves")

    # A refused /nick changes nothing; nor does a line that only looks like a reply.
    send_from_page(page, "/nick guest2")
    wait_for_line(page, "ERR nick guest2 is taken: choose another with /nick NAME")
    tcp.sendall(b"/nick you\n/me are now mallory\n")
    assert recv_lines(tcp, 1) == [b"* you are now you\n"]
    wait_for_line(page, "* you are now mallory")
    expect(page.locator("#nick")).to_have_text("bob")
    expect(page.locator("#room")).to_have_text("#kitchen")
    page.fill("#line", "/")  # the command hints, for the picture
    screenshot(page, "web-page-chat.png")


def test_chat_mode_quit_leaves_and_the_page_stays_out(
    rat_server: StartServer,
    pages: Callable[..., Page],
    tcp_clients: Callable[[ServerProcess], socket.socket],
) -> None:
    """After /quit the page does not come back by itself as a new guest; a click brings it back."""
    server = rat_server("--chat", "--web", "0")
    page = open_chat(pages(), server)
    expect(page.locator("#nick")).to_have_text("guest1", timeout=WAIT_MS)
    tcp = tcp_clients(server)
    assert recv_lines(tcp, 1) == [GREETING.format("guest2", 2).encode() + b"\n"]

    send_from_page(page, "/quit")
    wait_for_line(page, "* bye")
    wait_for_line(page, "disconnected (quit)")
    assert recv_lines(tcp, 1) == [b"* guest1 left #lobby\n"]
    state = page.locator("#state")
    expect(state).to_have_attribute("data-state", "offline")
    expect(page.locator("#where")).to_be_hidden()
    page.wait_for_timeout(1500)  # three times the first reconnect delay
    expect(state).to_have_attribute("data-state", "offline")
    assert_silent(tcp)  # nobody joined the lobby

    state.click()
    expect(state).to_have_attribute("data-state", "online", timeout=WAIT_MS)
    expect(page.locator("#nick")).to_have_text("guest3", timeout=WAIT_MS)
    assert recv_lines(tcp, 1) == [b"* guest3 joined #lobby\n"]
