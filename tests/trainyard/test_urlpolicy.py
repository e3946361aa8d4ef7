"""URL policy: schemes, credentials, host allowlist and every resolved or connected address, redirects re-checked."""

from __future__ import annotations

import io
import socket
import threading
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import serving
from trainyard import config
from trainyard.errors import ConfigError
from trainyard.urlpolicy import HostLookupError, PolicyRedirectHandler, UrlPolicy, UrlPolicyError

PUBLIC = "93.184.215.14"  # a global unicast address; never contacted, only classified


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        state = self.server.state
        with state["lock"]:
            state["hits"][self.path] += 1
        if self.path in state["redirects"]:
            self.send_response(302)
            self.send_header("Location", state["redirects"][self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"payload"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """A real HTTP server on 127.0.0.1 (free port) that counts requests and answers scripted redirects."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = {"lock": threading.Lock(), "hits": Counter(), "redirects": {}}
    # A proxy from the environment would sit between urllib and this server; these tests talk to it directly.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with serving(httpd) as base:
        httpd.base = base
        yield httpd


@pytest.fixture
def fake_dns(monkeypatch):
    """Answer chosen names from a table (a list, or a callable returning one); other names resolve for real."""
    real = socket.getaddrinfo
    table: dict[str, object] = {}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in table:
            return real(host, port, family, type, proto, flags)
        answers = table[host]() if callable(table[host]) else table[host]
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)) if ":" in a
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


# -- schemes and URL shape ----------------------------------------------------------------------------------------
def test_ftp_and_unknown_schemes_are_refused():
    with pytest.raises(UrlPolicyError, match="scheme 'ftp'.*https, http, s3"):
        UrlPolicy().check("ftp://example.com/data.csv")
    with pytest.raises(UrlPolicyError, match="scheme '\\(none\\)'"):
        UrlPolicy().check("example.com/data.csv")


def test_a_scheme_left_out_of_url_schemes_names_the_setting():
    with pytest.raises(UrlPolicyError, match="'http'.*url_schemes \\(https\\).*TRAINYARD_URL_SCHEMES"):
        UrlPolicy(schemes=frozenset({"https"})).check(f"http://{PUBLIC}/x")


def test_file_urls_need_url_allow_file(tmp_path):
    url = f"file://{tmp_path}/data.csv"
    with pytest.raises(UrlPolicyError, match="url_allow_file = true.*TRAINYARD_URL_ALLOW_FILE=true"):
        UrlPolicy().check(url)
    assert UrlPolicy(allow_file=True).check(url).path == f"{tmp_path}/data.csv"
    with pytest.raises(UrlPolicyError, match="file:///absolute/path"):
        UrlPolicy(allow_file=True).check("file://otherhost/etc/passwd")


def test_credentials_in_urls_are_refused_and_never_echoed():
    with pytest.raises(UrlPolicyError, match="carries credentials") as info:
        UrlPolicy().check(f"http://alice:s3cret@{PUBLIC}/data.csv")
    assert "s3cret" not in str(info.value) and "alice" not in str(info.value)
    with pytest.raises(UrlPolicyError, match="carries credentials"):
        UrlPolicy().check("s3://key:secret@bucket/data.csv")
    assert info.value.exit_code == 2


@pytest.mark.parametrize("url", ["http:///nohost", "http://exa mple.com/x", "http://[::1/x", "http://host:99999/x"])
def test_malformed_urls_are_refused(url):
    with pytest.raises(UrlPolicyError):
        UrlPolicy(allow_loopback=True).check(url)


# -- addresses ----------------------------------------------------------------------------------------------------
def test_the_cloud_metadata_endpoint_is_refused_even_with_every_allowance():
    everything = UrlPolicy(allow_private=True, allow_loopback=True)
    for url in ("http://169.254.169.254/latest/meta-data", "http://[fd00:ec2::254]/latest/meta-data",
                "http://169.254.170.2/v2/credentials"):
        with pytest.raises(UrlPolicyError, match="cloud metadata endpoint.*no setting allows it"):
            everything.check(url)


def test_loopback_is_refused_by_default_and_allowed_with_url_allow_loopback(server):
    url = f"{server.base}/x"
    with pytest.raises(UrlPolicyError, match="127.0.0.1, a loopback address.*url_allow_loopback = true"):
        UrlPolicy().check(url)
    assert UrlPolicy(allow_loopback=True).check(url).port == server.server_address[1]
    # allow_private does not open loopback: they are separate decisions.
    with pytest.raises(UrlPolicyError, match="loopback"):
        UrlPolicy(allow_private=True).check(url)


def test_localhost_is_refused_because_it_resolves_to_loopback():
    with pytest.raises(UrlPolicyError, match="host 'localhost' resolves to .*loopback"):
        UrlPolicy().check("http://localhost:8080/x")


def test_private_and_link_local_addresses_need_url_allow_private():
    for url in ("http://10.0.0.1/x", "http://192.168.1.20/x", "http://172.16.5.4/x", "http://[fd12::1]/x",
                "http://169.254.10.10/x", "http://[fe80::1]/x", "http://100.64.0.1/x"):
        with pytest.raises(UrlPolicyError, match="url_allow_private = true"):
            UrlPolicy().check(url)
        assert UrlPolicy(allow_private=True).check(url)


@pytest.mark.parametrize("url", [
    "http://0.0.0.0/x", "http://0.1.2.3/x", "http://[::]/x", "http://224.0.0.1/x", "http://[ff02::1]/x",
    "http://240.0.0.1/x", "http://255.255.255.255/x",
])
def test_unspecified_multicast_and_reserved_addresses_are_always_refused(url):
    with pytest.raises(UrlPolicyError, match="no setting allows it"):
        UrlPolicy(allow_private=True, allow_loopback=True).check(url)


@pytest.mark.parametrize("url", [
    "http://[::1]:8080/x",              # IPv6 loopback literal
    "http://[::ffff:127.0.0.1]/x",      # IPv4-mapped IPv6
    "http://[64:ff9b::7f00:1]/x",       # NAT64 of 127.0.0.1
    "http://[2002:7f00:1::]/x",         # 6to4 of 127.0.0.1
    "http://2130706433/x",              # 127.0.0.1 as one decimal number
    "http://0x7f.1/x",                  # and in the short hex form
])
def test_disguised_loopback_literals_are_refused(url):
    with pytest.raises(UrlPolicyError, match="loopback"):
        UrlPolicy().check(url)


def test_a_name_is_refused_if_any_of_its_addresses_is_private(fake_dns):
    fake_dns["data.example.com"] = [PUBLIC]
    fake_dns["mixed.example.com"] = [PUBLIC, "10.1.2.3"]
    assert UrlPolicy().check("https://data.example.com/x").hostname == "data.example.com"
    with pytest.raises(UrlPolicyError, match="'mixed.example.com' resolves to 10.1.2.3, a private address"):
        UrlPolicy().check("https://mixed.example.com/x")


def test_an_unresolvable_host_is_a_lookup_error(fake_dns):
    def nxdomain():
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    fake_dns["nowhere.example.com"] = nxdomain
    with pytest.raises(HostLookupError, match="cannot resolve host 'nowhere.example.com'.*DNS"):
        UrlPolicy().check("https://nowhere.example.com/x")


def test_s3_urls_name_a_bucket_and_are_not_resolved(monkeypatch):
    def no_dns(*args, **kwargs):
        raise AssertionError("s3:// buckets must not be DNS-resolved")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    parts = UrlPolicy().check("s3://my-bucket/data/train.csv")
    assert (parts.netloc, parts.path) == ("my-bucket", "/data/train.csv")
    with pytest.raises(UrlPolicyError, match="s3://bucket/key"):
        UrlPolicy().check("s3://my-bucket/")
    with pytest.raises(UrlPolicyError, match="url_schemes"):
        UrlPolicy(schemes=frozenset({"https"})).check("s3://my-bucket/x")


# -- host allowlist -----------------------------------------------------------------------------------------------
def test_host_allowlist_with_wildcards(fake_dns):
    fake_dns["a.example.com"] = [PUBLIC]
    fake_dns["deep.a.example.com"] = [PUBLIC]
    fake_dns["data.test"] = [PUBLIC]
    policy = UrlPolicy(allowed_hosts=frozenset({"*.example.com", "data.test"}))
    for url in ("https://a.example.com/x", "https://DEEP.a.example.com/x", "http://data.test:8080/x"):
        assert policy.check(url)
    assert policy.host_allowed("deep.a.example.com.") and not policy.host_allowed("example.com")
    for host in ("example.com", "evil.com", "example.com.evil.com", "badexample.com", "sub.data.test"):
        # Refused before any lookup: none of these names is in the fake table, and no real DNS is needed.
        with pytest.raises(UrlPolicyError, match=f"host '{host}'.*url_allowed_hosts \\(\\*.example.com, data.test\\)"):
            policy.check(f"https://{host}/x")


def test_the_allowlist_does_not_lift_the_address_checks(fake_dns):
    fake_dns["minio.corp.example"] = ["10.0.0.7"]
    policy = UrlPolicy(allowed_hosts=frozenset({"minio.corp.example"}))
    with pytest.raises(UrlPolicyError, match="private address.*url_allow_private"):
        policy.check("http://minio.corp.example:9000/bucket/x")
    assert UrlPolicy(allowed_hosts=policy.allowed_hosts, allow_private=True).check("http://minio.corp.example/x")


# -- settings -----------------------------------------------------------------------------------------------------
def test_from_settings_reads_the_url_settings():
    settings = config.load(url_schemes="https, S3", url_allowed_hosts="*.Example.com, data.test",
                           url_allow_private="true", url_allow_loopback="no", url_allow_file="1")
    policy = UrlPolicy.from_settings(settings)
    assert policy == UrlPolicy(schemes=frozenset({"https", "s3"}),
                               allowed_hosts=frozenset({"*.example.com", "data.test"}),
                               allow_private=True, allow_loopback=False, allow_file=True)
    default = UrlPolicy.from_settings(config.load())
    assert default == UrlPolicy()


def test_from_settings_refuses_what_it_cannot_honour():
    with pytest.raises(ConfigError, match="url_schemes lists ftp"):
        UrlPolicy.from_settings(config.load(url_schemes="https,ftp"))
    with pytest.raises(ConfigError, match="only a leading '\\*.' wildcard"):
        UrlPolicy.from_settings(config.load(url_allowed_hosts="data.*.com"))


# -- redirects and connections ------------------------------------------------------------------------------------
def test_a_redirect_to_the_metadata_endpoint_is_refused(server):
    server.state["redirects"]["/start"] = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    opener = UrlPolicy(allow_loopback=True, allow_private=True).opener()
    with pytest.raises(UrlPolicyError, match="169.254.169.254, a cloud metadata endpoint"):
        opener.open(f"{server.base}/start", timeout=5)
    assert server.state["hits"] == Counter({"/start": 1})


def test_a_redirect_to_a_private_address_is_refused_and_an_allowed_one_followed(server):
    server.state["redirects"]["/private"] = "http://10.0.0.1/x"
    server.state["redirects"]["/moved"] = "/data"
    opener = UrlPolicy(allow_loopback=True).opener()
    with pytest.raises(UrlPolicyError, match="10.0.0.1, a private address"):
        opener.open(f"{server.base}/private", timeout=5)
    with opener.open(f"{server.base}/moved", timeout=5) as response:
        assert response.read() == b"payload"
    assert server.state["hits"]["/data"] == 1


def test_redirects_to_other_schemes_and_https_downgrades_are_refused(fake_dns, server):
    fake_dns["data.example.com"] = [PUBLIC]
    handler = PolicyRedirectHandler(UrlPolicy())
    request = urllib.request.Request("https://data.example.com/x")
    with pytest.raises(UrlPolicyError, match="downgrade from https to plain http"):
        handler.redirect_request(request, io.BytesIO(), 302, "Found", {}, "http://data.example.com/x")
    assert handler.redirect_request(request, io.BytesIO(), 302, "Found", {},
                                    "https://data.example.com/y").full_url == "https://data.example.com/y"
    server.state["redirects"]["/to-file"] = "file:///etc/passwd"
    with pytest.raises(UrlPolicyError, match="redirects may only lead to http"):
        UrlPolicy(allow_loopback=True, allow_file=True).opener().open(f"{server.base}/to-file", timeout=5)


def test_the_address_really_connected_is_checked_so_dns_rebinding_fails(fake_dns, server):
    answers = iter([[PUBLIC]])
    # First answer (the policy check) is public; every later one (the connection) is the loopback server.
    fake_dns["rebind.example.com"] = lambda: next(answers, ["127.0.0.1"])
    url = f"http://rebind.example.com:{server.server_address[1]}/secret"
    policy = UrlPolicy()
    assert policy.check(url)
    with pytest.raises(UrlPolicyError, match="127.0.0.1, a loopback address"):
        policy.opener().open(url, timeout=5)
    assert server.state["hits"] == Counter()
