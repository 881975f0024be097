"""No request reaches for the internet: only the configured provider on loopback is called."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from llm_server.testing import LocalProvider

SCRIPT = textwrap.dedent(
    """
    import asyncio, ipaddress, socket, sys, tempfile, threading

    attempts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def loopback(host):
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host == "localhost"

    def connect(sock, address):
        if isinstance(address, tuple) and not loopback(address[0]):
            attempts.append(("connect", address[0]))
            raise OSError("outbound connection blocked by the test")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not loopback(str(host)):
            attempts.append(("resolve", host))
            raise socket.gaierror("name resolution blocked by the test")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.getaddrinfo = getaddrinfo

    import dspy
    from llm_server.core.config import FrameworkSettings
    from llm_server.defaults import YamlConfigProvider
    from llm_server.models.manager import ModelManager

    CONFIG = '''
    models:
      claude-litellm: {model_name: anthropic/claude-3-5-haiku-20241022, engine: litellm,
                       api_base: "BASE", api_key: sk-ant-test}
      claude-native: {model_name: anthropic/claude-3-5-haiku-20241022, engine: auto,
                      api_base: "BASE", api_key: sk-ant-test}
      gpt-litellm: {model_name: openai/gpt-4o-mini, engine: litellm,
                    api_base: "BASE/v1", api_key: sk-test}
      gpt-native: {model_name: openai/gpt-4o-mini, engine: auto,
                   api_base: "BASE/v1", api_key: sk-test}
    '''

    async def main():
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as file:
            file.write(CONFIG.replace("BASE", sys.argv[1]))
        manager = ModelManager(
            config_provider=YamlConfigProvider(file.name), settings=FrameworkSettings()
        )
        for model_id in manager.model_ids:
            backend = manager.reliable_backend(dspy.Predict("question -> answer"), model_id)
            output = await backend.predict({"question": "anyone out there?"})
            assert output.content.answer.startswith("echo"), output
        # What LiteLLM consults on a request that carries Anthropic betas (the served calls
        # above carry none), with the URL it would fetch by default.
        import litellm
        from litellm.anthropic_beta_headers_manager import get_beta_headers_config

        get_beta_headers_config(litellm.anthropic_beta_headers_url)
        await asyncio.sleep(1.0)  # LiteLLM fetches in background threads: give them time
        await manager.aclose()
        print("attempts:", attempts)

    asyncio.run(main())
    """
)


def test_serving_every_engine_and_protocol_tries_no_outbound_connection() -> None:
    with LocalProvider() as provider:
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, provider.base_url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "attempts: []" in result.stdout, result.stdout + result.stderr[-2000:]
