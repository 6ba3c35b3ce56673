//! Markdown to HTML for what people read in a browser: model cards, and reasons and summaries
//! that name things in `code`. CommonMark with tables and strikethrough (pulldown-cmark); raw
//! HTML in the text is shown as text, never passed through, and a link or image keeps its target
//! only when it is http(s), mailto or relative — a card comes from whoever built the bundle.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd, html};

/// A whole document (a model card) as HTML.
pub fn to_html(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(
        &mut out,
        safe(Parser::new_ext(markdown, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH)),
    );
    out
}

/// One line of text (a gate's reason, an alert's summary) as inline HTML: `code`, *emphasis*
/// and links rendered, no surrounding paragraph.
pub fn inline_html(text: &str) -> String {
    let html = to_html(text);
    let trimmed = html.trim_end();
    match trimmed.strip_prefix("<p>").and_then(|t| t.strip_suffix("</p>")) {
        Some(inner) if !inner.contains("<p>") => inner.to_owned(),
        _ => trimmed.to_owned(),
    }
}

/// The events with raw HTML turned into text and unsafe link targets dropped.
fn safe<'a>(events: impl Iterator<Item = Event<'a>>) -> impl Iterator<Item = Event<'a>> {
    events.map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Link { link_type, dest_url: safe_url(dest_url), title, id })
        }
        Event::Start(Tag::Image { link_type, dest_url, title, id }) => {
            Event::Start(Tag::Image { link_type, dest_url: safe_url(dest_url), title, id })
        }
        Event::End(TagEnd::HtmlBlock) => Event::Text("".into()),
        Event::Start(Tag::HtmlBlock) => Event::Text("".into()),
        other => other,
    })
}

/// `url` when it is http(s), mailto, a fragment or relative; `#` otherwise (`javascript:` …).
fn safe_url(url: CowStr<'_>) -> CowStr<'_> {
    let lower = url.trim().to_ascii_lowercase();
    let scheme = lower.split_once(':').map(|(s, _)| s).filter(|s| !s.contains(['/', '?', '#']));
    match scheme {
        None | Some("http" | "https" | "mailto") => url,
        Some(_) => "#".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_becomes_html() {
        let html = to_html(
            "# Card\n\nTrained on _public_ data with `sklearn`.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- one\n- two\n",
        );
        assert!(html.contains("<h1>Card</h1>"), "{html}");
        assert!(html.contains("<em>public</em>") && html.contains("<code>sklearn</code>"), "{html}");
        assert!(html.contains("<table>") && html.contains("<td>1</td>"), "{html}");
        assert!(html.contains("<li>one</li>"), "{html}");
        assert!(!html.contains('_') && !html.contains('`'), "no Markdown left: {html}");
    }

    #[test]
    fn raw_html_and_script_links_are_defused() {
        let html = to_html(
            "<script>alert(1)</script>\n\nhi <img src=x onerror=alert(1)> [x](javascript:alert(1)) [ok](https://example.com)",
        );
        assert!(!html.contains("<script") && !html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;") && html.contains("&lt;img"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("href=\"https://example.com\""), "{html}");
    }

    #[test]
    fn a_reason_renders_inline() {
        assert_eq!(inline_html("gate `accuracy>=-5%` failed"), "gate <code>accuracy&gt;=-5%</code> failed");
        assert_eq!(inline_html("a < b"), "a &lt; b");
    }
}
