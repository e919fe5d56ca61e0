"""What the files tests share: uploads, waiting for ingestion, generated PDF/DOCX bytes."""

from __future__ import annotations

import asyncio
import io

from agentmesh.client import Client
from agentmesh.gen.files.v1 import files_pb2 as f

READY, FAILED = f.PROCESSING_STATE_READY, f.PROCESSING_STATE_FAILED


async def upload(
    client: Client,
    filename: str,
    data: bytes,
    mime_type: str = "",
    metadata: dict[str, str] | None = None,
    piece: int = 64 * 1024,
) -> f.File:
    async def parts():
        yield f.UploadFileRequest(
            metadata=f.UploadFileRequest.Metadata(
                filename=filename, mime_type=mime_type, metadata=metadata or {}
            )
        )
        for start in range(0, len(data), piece):
            yield f.UploadFileRequest(chunk=data[start : start + piece])

    return await client.files.UploadFile(parts())


async def settled(client: Client, name: str, within: float = 60.0) -> f.File:
    """The file once it is READY or FAILED, watched through WatchFile."""
    async with asyncio.timeout(within):
        seen = [file async for file in client.files.WatchFile(f.WatchFileRequest(name=name))]
    last = seen[-1] if seen else None
    assert last is not None and last.state in (READY, FAILED), last
    return last


async def new_store(client: Client, **chunking: int) -> f.VectorStore:
    return await client.files.CreateVectorStore(
        f.CreateVectorStoreRequest(
            vector_store=f.VectorStore(display_name="docs", chunking=f.Chunking(**chunking))
        )
    )


async def index_file(
    client: Client, store: f.VectorStore, filename: str, data: bytes, **kwargs
) -> f.File:
    """Uploads a file into a store and waits until it is searchable."""
    file = await upload(client, filename, data, **kwargs)
    await client.files.AddVectorStoreFile(
        f.AddVectorStoreFileRequest(vector_store=store.name, file=file.name)
    )
    return await settled(client, file.name)


async def search(client: Client, store: f.VectorStore, query: str, top: int = 3, **filters):
    request = f.SearchVectorStoreRequest(vector_store=store.name, query=query, max_results=top)
    if filters:
        request.filter.update(filters)
    return (await client.files.SearchVectorStore(request)).results


def pdf_bytes(*lines: str) -> bytes:
    """A one-page PDF showing these lines in Helvetica (pypdf reads PDFs, it does not
    typeset them, so the few objects a text page needs are written here)."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    shown = " ".join(f"({escape(line)}) Tj 0 -16 Td" for line in lines)
    content = f"BT /F1 12 Tf 72 720 Td {shown} ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def docx_bytes(*paragraphs: str, table: list[list[str]] | None = None) -> bytes:
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for row, values in zip(grid.rows, table, strict=True):
            for cell, value in zip(row.cells, values, strict=True):
                cell.text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()
