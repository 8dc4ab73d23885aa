"""Files of encrypted rooms (`EncryptedFile`): decrypted after download, encrypted before upload,
each in place, so the bytes are held once.

The crypto packages (python-olm, pycryptodome) are optional in maubot: without them the bot
cannot read encrypted rooms at all, and plain rooms need none of this.
"""

from __future__ import annotations

from typing import Any

try:
    from mautrix.crypto.attachments import decrypt_attachment, inplace_encrypt_attachment
    from mautrix.errors import DecryptionError
except ImportError:  # maubot without its encryption extras
    decrypt_attachment = None
    inplace_encrypt_attachment = None
    DecryptionError = ValueError  # type: ignore[assignment,misc]


class CryptoUnavailable(RuntimeError):
    """This maubot has no encryption packages, so it cannot handle encrypted files."""


def decrypt_in_place(data: bytearray, file: dict[str, Any]) -> None:
    """Decrypts a downloaded EncryptedFile; raises ValueError if it is not what it claims."""
    if decrypt_attachment is None:
        raise CryptoUnavailable("this bot has no encryption support")
    key, hashes, iv = file.get("key") or {}, file.get("hashes") or {}, file.get("iv")
    if not isinstance(key, dict) or not isinstance(hashes, dict) or not isinstance(iv, str):
        raise ValueError("the file's encryption info is incomplete")
    try:
        decrypt_attachment(data, key.get("k"), hashes.get("sha256"), iv, inplace=True)
    except DecryptionError as e:
        raise ValueError(f"the file does not decrypt ({e})") from e


def encrypt_in_place(data: bytearray) -> dict[str, Any]:
    """Encrypts the bytes for an encrypted room; returns the EncryptedFile without its url."""
    if inplace_encrypt_attachment is None:
        raise CryptoUnavailable("this bot has no encryption support")
    return inplace_encrypt_attachment(data).serialize()
