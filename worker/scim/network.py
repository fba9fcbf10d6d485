"""The network between the pool and an application: its proxy and its TLS settings.

``http_transport`` builds the httpx transport of one app (a pool of keep-alive connections):

- **proxy**: the app's own (``apps activate|update --proxy URL``, its user's password read from
  ``--proxy-password-file`` each time a client is built), none (``--no-proxy``), or
  by default the process's environment, read as httpx's ``trust_env`` reads it:
  ``HTTPS_PROXY`` for https URLs, ``HTTP_PROXY`` for http ones, ``ALL_PROXY`` for both (lower
  case names first), and none for a host ``NO_PROXY`` names (``*``; a name, which covers its
  subdomains; ``.name``, only its subdomains; an IP address or a CIDR range). An https URL is
  tunnelled (``CONNECT``), so the proxy never sees the token;
- **TLS**: the app's CA bundle (``--ca-file``) instead of the system's, and a client
  certificate for mTLS (``--client-cert``, ``--client-key``); httpx's defaults otherwise
  (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``).

A proxy's password is a secret: it is kept out of error messages (``proxy_secrets``) and Sentry
reports (``observability.remember_secret``). It is never in a URL of ours (an app saved by an
earlier version may still hold one in its proxy URL: it works the same way).
"""

from __future__ import annotations

import ssl
import urllib.request
from ipaddress import ip_address, ip_network
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from worker import observability
from worker.store.apps import AppError, Network, read_proxy_password


def http_transport(base_url: str, network: Network) -> httpx.HTTPTransport:
    """The app's connection pool (``connection``)."""
    return connection(base_url, network)[0]


def connection(base_url: str, network: Network) -> tuple[httpx.HTTPTransport, tuple[str, ...]]:
    """The app's connection pool: through its proxy (``proxy_for``, with the password of
    ``proxy_password``, its file read once), with its TLS settings; and the proxy's secrets
    (``proxy_secrets``). ``AppError`` when a CA file, client certificate or proxy password
    file does not load."""
    url, password = proxy_for(base_url, network), proxy_password(network)
    secrets = _secrets(url, password)
    for secret in secrets:
        observability.remember_secret(secret)
    proxy: httpx.Proxy | str | None = url
    if url and password:  # httpx takes a user name in the URL for the whole of its credentials
        parts = urlsplit(url)
        bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        proxy = httpx.Proxy(bare, auth=(unquote(parts.username or ""), password))
    return httpx.HTTPTransport(verify=tls_context(network), proxy=proxy), secrets


def proxy_for(url: str, network: Network) -> str | None:
    """The proxy requests to ``url`` go through, None for a direct connection."""
    if network.proxy is None:
        return environment_proxy(url)
    return network.proxy or None


def environment_proxy(url: str) -> str | None:
    """The proxy the process's environment gives ``url`` (see the module's docstring)."""
    proxies = urllib.request.getproxies_environment()
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or bypassed(parts.hostname or "", proxies.get("no", "")):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def bypassed(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (comma-separated) names ``host``."""
    host = host.lower()
    entries = (entry.strip().lower() for entry in no_proxy.split(","))
    return any(entry == "*" or _names(entry, host) for entry in entries if entry)


def _names(entry: str, host: str) -> bool:
    """Whether one ``NO_PROXY`` entry covers ``host``."""
    if "://" in entry:
        entry = urlsplit(entry).hostname or ""
    try:
        network = ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        domain = entry.removeprefix("*")
        if domain.startswith("."):
            return host.endswith(domain)
        return host == domain or host.endswith("." + domain)
    try:
        return ip_address(host) in network
    except ValueError:
        return False


def proxy_password(network: Network) -> str | None:
    """The password of the app's own proxy, read from its file now (a renewed file is read by
    the next client built); None without one. ``AppError`` when the file is unreadable or
    empty."""
    if not (network.proxy and network.proxy_password_file):
        return None
    return read_proxy_password(network.proxy_password_file)


def proxy_secrets(base_url: str, network: Network) -> tuple[str, ...]:
    """The password of the proxy calls to ``base_url`` go through: text never to show."""
    return _secrets(proxy_for(base_url, network), proxy_password(network))


def _secrets(url: str | None, password: str | None) -> tuple[str, ...]:
    """The password of the file, and one in the URL as written and decoded."""
    in_url = urlsplit(url).password if url else None
    found = {in_url, unquote(in_url)} if in_url else set()
    return tuple(found | {password} if password else found)


def tls_context(network: Network) -> ssl.SSLContext | bool:
    """The app's TLS settings for httpx: ``True`` (httpx's default verification) unless the
    app has a CA file or a client certificate. ``AppError`` naming the file that does not
    load (a CA file holding no certificate, a key that is encrypted or is not the
    certificate's)."""
    if not (network.ca_file or network.client_cert):
        return True
    try:
        context = (
            ssl.create_default_context(cafile=network.ca_file)
            if network.ca_file
            else httpx.create_ssl_context()
        )
    except (OSError, ssl.SSLError) as error:
        raise AppError(f"cannot load the CA file {network.ca_file}: {_why(error)}") from None
    if network.client_cert:
        try:
            context.load_cert_chain(network.client_cert, network.client_key, password=_no_password)
        except (OSError, ssl.SSLError) as error:
            key = f" with the key {network.client_key}" if network.client_key else ""
            raise AppError(
                f"cannot load the client certificate {network.client_cert}{key}: {_why(error)} "
                "(expected PEM files: the certificate, and its private key unencrypted)"
            ) from None
    return context


def _no_password() -> bytes:
    """An encrypted key fails to load rather than prompt on a terminal."""
    return b""


def _why(error: OSError) -> str:
    return error.strerror or str(error)  # an SSLError's strerror is OpenSSL's reason


__all__ = [
    "bypassed",
    "connection",
    "environment_proxy",
    "http_transport",
    "proxy_for",
    "proxy_password",
    "proxy_secrets",
    "tls_context",
]
