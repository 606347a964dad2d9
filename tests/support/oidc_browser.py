#!/usr/bin/env python3
"""oidc_browser.py: a scripted user (and, for tests that drive the flow by hand, a scripted
device) for the OAuth 2.0 Device Authorization Grant (RFC 8628) against the tests' OpenID Connect
provider (scripts/oidc-provider/provider.mjs). Used by tests/support/oidc.rs.

  oidc_browser.py login --ca CA --user USER --password PASSWORD VERIFICATION_URI_COMPLETE
      What a person does in a browser: open the verification URL (the one with the user code),
      confirm the code, sign in, consent. Every step parses the HTML form the provider served
      and submits what a browser would (hidden fields included). Exits 0 only when the provider
      says "Sign-in Success"; otherwise non-zero with the reason and the page on stderr.

  oidc_browser.py authorize --ca CA ISSUER
      What the CLI does first: discovery (its issuer must equal ISSUER), then the device
      authorization request for client tether, scope "openid email groups offline_access".
      Prints the response (JSON, with device_code and verification_uri_complete) on stdout.

  oidc_browser.py poll --ca CA [--timeout SECONDS] ISSUER DEVICE_CODE
      Polls the token endpoint (RFC 8628 section 3.4/3.5: interval default 5 s, slow_down adds
      5 s) until it answers with tokens, which it prints (JSON) on stdout.

Only loopback is spoken to: proxies from the environment are ignored. Every request has a
timeout, and so has every loop.
"""
import argparse
import html.parser
import json
import sys
import time
import urllib.parse

import requests

CLIENT_ID = "tether"
SCOPE = "openid email groups offline_access"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REQUEST_TIMEOUT = 10
SUCCESS = "Sign-in Success"


def fail(message, page=None):
    """Exit 1 with MESSAGE (and the page that was served, if any) on stderr."""
    text = f"oidc_browser.py: {message}"
    if page is not None:
        text += f"\n  at {page.url} (HTTP {page.status_code}):\n{page.text[:3000]}"
    print(text, file=sys.stderr)
    sys.exit(1)


def session(ca):
    """An HTTP session that trusts CA only and never uses a proxy."""
    s = requests.Session()
    s.verify = ca
    s.trust_env = False
    return s


class Forms(html.parser.HTMLParser):
    """Collects <form>s: id, action, method and named <input>s."""

    def __init__(self):
        super().__init__()
        self.forms, self._cur = [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self._cur = {"id": a.get("id") or "", "action": a.get("action") or "",
                         "method": (a.get("method") or "get").lower(), "fields": {}}
            self.forms.append(self._cur)
        elif tag == "input" and a.get("name") and self._cur is not None:
            self._cur["fields"][a["name"]] = a.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form":
            self._cur = None


def forms_of(page):
    p = Forms()
    p.feed(page.text)
    p.close()
    return p.forms


def submit(s, page, form, values):
    """Submits FORM of PAGE with its own fields (hidden ones included) updated by VALUES."""
    data = dict(form["fields"])
    data.update(values)
    url = urllib.parse.urljoin(page.url, form["action"] or page.url)
    try:
        r = s.request(form["method"].upper(), url, data=data, timeout=REQUEST_TIMEOUT)
    except requests.RequestException as e:
        fail(f"submitting form {form['id'] or form['action']!r} to {url}: {e}")
    if r.status_code >= 400:
        fail(f"submitting form {form['id'] or form['action']!r} got HTTP {r.status_code}", r)
    return r


def login(a):
    """The user's side: verification URL -> confirm -> sign in -> consent -> success page."""
    s = session(a.ca)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(a.url).query)
    user_code = (query.get("user_code") or [""])[0]
    try:
        page = s.get(a.url, timeout=REQUEST_TIMEOUT)
    except requests.RequestException as e:
        fail(f"opening {a.url}: {e}")
    if page.status_code >= 400:
        fail(f"opening the verification URL got HTTP {page.status_code}", page)
    steps = []
    signed_in = False
    # Each page has one form that moves the flow on; a handful of steps is all it takes, and a
    # page seen twice (a form the provider serves again) ends the loop.
    for _ in range(10):
        if SUCCESS in page.text:
            print(f"signed in as {a.user}: {' -> '.join(steps)}", file=sys.stderr)
            return
        forms = forms_of(page)
        by_id = {f["id"]: f for f in forms}
        if "wrong user name or password" in page.text:
            fail(f"the provider refused user {a.user!r} with this password", page)
        if "login" in by_id and "password" in by_id["login"]["fields"]:
            if signed_in:
                fail("the provider asked for the password again", page)
            signed_in = True
            steps.append("sign in")
            page = submit(s, page, by_id["login"], {"login": a.user, "password": a.password})
        elif "consent" in by_id:
            steps.append("consent")
            page = submit(s, page, by_id["consent"], {})
        elif "op.deviceConfirmForm" in by_id:
            steps.append("confirm code")
            page = submit(s, page, by_id["op.deviceConfirmForm"], {"confirm": "yes"})
        else:
            # The user-code form: filled in (verification_uri) or auto-submitting (the
            # verification_uri_complete page, which a browser posts with JavaScript).
            code_forms = [f for f in forms if "user_code" in f["fields"]]
            if not code_forms:
                fail("no form to go on with (neither user code, confirmation, sign-in nor consent)", page)
            form = code_forms[0]
            if not form["fields"]["user_code"]:
                if not user_code:
                    fail("the page asks for the user code, and the URL carries none", page)
                form["fields"]["user_code"] = user_code
            if "enter code" in steps:
                fail("the provider asked for the user code again (unknown or expired code?)", page)
            steps.append("enter code")
            page = submit(s, page, form, {})
    fail(f"no \"{SUCCESS}\" page after {len(steps)} steps ({' -> '.join(steps)})", page)


def discover(s, issuer):
    try:
        r = s.get(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=REQUEST_TIMEOUT)
        r.raise_for_status()
        disc = r.json()
    except (requests.RequestException, ValueError) as e:
        fail(f"discovery at {issuer}: {e}")
    if disc.get("issuer") != issuer:
        fail(f"discovery says issuer {disc.get('issuer')!r}, expected {issuer!r}")
    return disc


def authorize(a):
    """The CLI's first step: the device authorization request."""
    s = session(a.ca)
    disc = discover(s, a.issuer)
    try:
        r = s.post(disc["device_authorization_endpoint"], data={"client_id": CLIENT_ID, "scope": SCOPE},
                   timeout=REQUEST_TIMEOUT)
    except requests.RequestException as e:
        fail(f"device authorization request: {e}")
    if r.status_code != 200:
        fail(f"device authorization request got HTTP {r.status_code}: {r.text[:2000]}")
    print(json.dumps(r.json()))


def poll(a):
    """The CLI's second step: poll the token endpoint until the user has signed in."""
    s = session(a.ca)
    disc = discover(s, a.issuer)
    interval = a.interval
    deadline = time.monotonic() + a.timeout
    while True:
        try:
            r = s.post(disc["token_endpoint"], timeout=REQUEST_TIMEOUT,
                       data={"grant_type": DEVICE_GRANT, "device_code": a.device_code, "client_id": CLIENT_ID})
        except requests.RequestException as e:
            fail(f"token request: {e}")
        if r.status_code == 200:
            print(json.dumps(r.json()))
            return
        try:
            error = r.json().get("error")
        except ValueError:
            error = None
        if error == "slow_down":
            interval += 5
        elif error != "authorization_pending":
            fail(f"token request got HTTP {r.status_code}: {r.text[:2000]}")
        if time.monotonic() + interval > deadline:
            fail(f"still {error} after {a.timeout} s")
        time.sleep(interval)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("login", help="sign in as a user would in a browser")
    p.add_argument("--ca", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("url", help="verification_uri_complete")
    p.set_defaults(run=login)
    p = sub.add_parser("authorize", help="device authorization request")
    p.add_argument("--ca", required=True)
    p.add_argument("issuer")
    p.set_defaults(run=authorize)
    p = sub.add_parser("poll", help="poll the token endpoint")
    p.add_argument("--ca", required=True)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--interval", type=float, default=5, help="seconds between polls (RFC 8628 default 5)")
    p.add_argument("issuer")
    p.add_argument("device_code")
    p.set_defaults(run=poll)
    a = ap.parse_args()
    a.run(a)


if __name__ == "__main__":
    main()
