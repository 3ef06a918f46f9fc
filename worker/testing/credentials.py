"""Videos with C2PA Content Credentials, signed with a throwaway CA, for tests and the demo.

``sign_video`` embeds a manifest whose ``c2pa.created`` (or ``c2pa.edited``) action names an
IPTC digital source type, the way a generator (or a camera) declares what it made. The
signing certificate comes from ``worker.testing.tls.CertificateAuthority`` (its CA file is
the trust anchor a test configures). Needs ``c2pa-python`` and ``cryptography``.
"""
from __future__ import annotations

from pathlib import Path

from worker.testing.tls import CertFiles

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def sign_video(source: Path, dest: Path, signer: CertFiles, source_type: str = "trainedAlgorithmicMedia",
               action: str = "c2pa.created", ingredients: int = 0, generator: str = "test-generator",
               remote_url: str | None = None) -> Path:
    """Copy the MP4 ``source`` to ``dest`` with a signed manifest store; with ``remote_url``,
    the store is left out of the file, which points at that URL instead."""
    import c2pa

    manifest = {
        "claim_generator_info": [{"name": generator, "version": "1.0"}],
        "title": Path(dest).name,
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [
            {"action": action, "digitalSourceType": IPTC + source_type}]}}],
        "ingredients": [{"title": f"ingredient-{i}.mp4", "format": "video/mp4", "relationship": "componentOf"}
                        for i in range(ingredients)],
    }
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, signer.cert.read_bytes(), signer.key.read_bytes(), None)
    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}},
                                      "verify": {"remote_manifest_fetch": False, "verify_after_sign": False}})
    with c2pa.Signer.from_info(info) as key, c2pa.Builder(manifest, context=context) as builder:
        if remote_url:
            builder.set_no_embed()
            builder.set_remote_url(remote_url)
        with open(source, "rb") as src, open(dest, "w+b") as out:
            builder.sign(key, "video/mp4", src, out)
    return Path(dest)
