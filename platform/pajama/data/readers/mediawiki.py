"""Reader of MediaWiki pages-articles XML dumps: one document per namespace-0 article, its
wikitext cleaned to plain text; redirects and other namespaces are left out."""

from xml.etree import ElementTree

import ray

from pajama.data import cleaning
from pajama.data.readers.common import XML_ERRORS, DocumentFiles, Rejected, broken_xml, document_row

_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
# Namespaces whose links are media or categories, not prose: -2 Media, 6 File, 14 Category.
_DROPPED_LINK_NAMESPACES = {"-2", "6", "14"}


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


class _MediaWikiDocuments(DocumentFiles):
    EXTENSIONS = [f"xml{compression}" for compression in ("", ".bz2", ".gz", ".zst")]
    LOCATOR = "page"

    def _documents(self, f, path):
        root = None
        language, article_url, dropped_prefixes = None, None, []
        page_id = None
        try:
            for event, element in ElementTree.iterparse(f, events=("start", "end")):
                if root is None:
                    root, language = element, element.get(_XML_LANG)
                if event != "end":
                    continue
                tag = _local_name(element.tag)
                if tag == "siteinfo":
                    base = element.findtext("{*}base") or ""
                    article_url = base.rsplit("/", 1)[0] + "/" if "/" in base else None
                    dropped_prefixes = [
                        namespace.text
                        for namespace in element.iterfind("{*}namespaces/{*}namespace")
                        if namespace.get("key") in _DROPPED_LINK_NAMESPACES and namespace.text
                    ]
                elif tag == "page":
                    page_id = element.findtext("{*}id")
                    document = self._page_document(element, path, language, article_url, dropped_prefixes)
                    root.clear()  # drop the pages parsed so far: dumps are tens of GB
                    if document is not None:
                        yield document
        except XML_ERRORS as error:
            yield broken_xml(path, error, page_id and f"page {page_id}", self._slice_name)

    def _page_document(self, page, path, language, article_url, dropped_prefixes) -> dict | Rejected | None:
        page_id = page.findtext("{*}id")
        title = page.findtext("{*}title")
        revision = page.find("{*}revision")
        where = f"page {page_id or '?'} ({title!r})"
        # A page without an id is named by its title (unique in a dump).
        doc_id = f"{path}#{page_id}" if page_id else f"{path}#title:{title}"
        if page.findtext("{*}ns") != "0" or page.find("{*}redirect") is not None:
            return None
        if not page_id or title is None or revision is None or revision.find("{*}text") is None:
            return Rejected(doc_id, where, "page without id, title or revision text", self._slice_name,
                            (revision is not None and revision.findtext("{*}text")) or "")
        wikitext = revision.findtext("{*}text")
        if wikitext.lstrip().upper().startswith("#REDIRECT"):
            return None  # older dumps mark redirects only in the text
        try:
            text = cleaning.clean_wikitext(wikitext, dropped_prefixes)
        except Exception as error:  # mwparserfromhell raises assorted errors on pathological markup
            return Rejected(doc_id, where, f"wikitext could not be parsed ({error!r})", self._slice_name, wikitext)
        meta = {
            "title": title,
            "url": article_url + title.replace(" ", "_") if article_url else None,
            "language": language,
            "timestamp": revision.findtext("{*}timestamp"),
        }
        return document_row(f"{path}#{page_id}", self._slice_name, text, meta)


def read_mediawiki(paths, slice_name, *, policy, filesystem=None):
    return ray.data.read_datasource(
        _MediaWikiDocuments(paths, slice_name=slice_name or "wikipedia", policy=policy, filesystem=filesystem)
    )
