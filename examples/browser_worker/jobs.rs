//! The two job kinds: `conferencia` reads an order page, `emissao` prints an invoice to PDF
//! and checks it.
//!
//! A payload is JSON `{"id": 17}` (a number or a numeric string); `"hold": true` opens the
//! page with `?hold` (the site then waits until a test releases it); `"fail": "panic"` makes
//! the job panic (as in `rpa_worker`: the pool drops the worker's browser and builds another). Results are JSON:
//! conferencia `{"id","queue","worker","customer","total","items"}`, emissao
//! `{"id","queue","worker","path","bytes","pages"}`.
#![allow(dead_code)] // the example and each test use a different part

use std::path::{Path, PathBuf};

use threadtide::JobError;

use super::browser::Session;
use super::site;

/// A job as the poller writes it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    pub hold: bool,
    pub panic: bool,
}

/// The decoder given to `RedisSource`: refuses (dead-letters as malformed) anything that is
/// not such JSON.
pub fn decode(bytes: &[u8]) -> Result<Job, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let id = match value.get("id") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or("missing or invalid \"id\"")?;
    let hold = value.get("hold").and_then(serde_json::Value::as_bool) == Some(true);
    let panic = value.get("fail").and_then(serde_json::Value::as_str) == Some("panic");
    Ok(Job { id, hold, panic })
}

fn path_of(kind: &str, job: &Job) -> String {
    if job.panic {
        panic!("job {} asked to panic", job.id);
    }
    let hold = if job.hold { "?hold" } else { "" };
    format!("/{kind}/{}{hold}", job.id)
}

/// A failure of the browser (or of the page): retryable, the job runs again, and the health
/// check before the next job finds out whether the browser must be rebuilt.
fn retry(e: impl std::fmt::Display) -> JobError {
    JobError::retryable(e.to_string())
}

/// Opens `path` and waits until the page whose nonce URL was asked shows `ready_js` (a JS
/// expression true once the values are there). A page that asks for a login (the session was
/// refused) logs in again once and reloads.
fn open(
    session: &mut Session,
    path: &str,
    ready_js: &str,
    value_js: &str,
) -> Result<String, JobError> {
    for attempt in 0..2 {
        let url = session.goto(path).map_err(retry)?;
        let js = format!(
            "(() => {{ if (location.href !== {url}) return null; \
               if (document.querySelector('#login-required')) return 'LOGIN'; \
               if (!({ready_js})) return null; return {value_js}; }})()",
            url = serde_json::Value::from(url)
        );
        let value = session.wait_for(&js).map_err(retry)?;
        if value != "LOGIN" {
            return Ok(value);
        }
        if attempt == 0 {
            session.login().map_err(retry)?;
        }
    }
    Err(JobError::retryable(
        "the site refused the session after a new login",
    ))
}

/// `conferencia`: the order's values, as the page shows them, once the page is parsed (an
/// element can be in the DOM before its text is: `#items` empty read as 0 items).
pub fn conferencia(session: &mut Session, job: &Job) -> Result<Vec<u8>, JobError> {
    let ready = format!(
        "document.readyState !== 'loading' && document.querySelector('#order-id') && \
         document.querySelector('#order-id').textContent === '{}' && \
         document.querySelector('#items')",
        job.id
    );
    let values = "JSON.stringify({customer: document.querySelector('#customer').textContent, \
        total: document.querySelector('#total').textContent, \
        items: Number(document.querySelector('#items').textContent)})";
    let text = open(session, &path_of("order", job), &ready, values)?;
    let values: serde_json::Value = serde_json::from_str(&text).map_err(retry)?;
    let result = serde_json::json!({
        "id": job.id,
        "queue": "conferencia",
        "worker": session.worker,
        "customer": values["customer"],
        "total": values["total"],
        "items": values["items"],
    });
    Ok(result.to_string().into_bytes())
}

/// What a PDF holds, as lopdf reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PdfCheck {
    pub pages: usize,
    /// The text of every page, in order.
    pub text: String,
}

/// Opens `bytes` with lopdf: page count and extracted text.
pub fn read_pdf(bytes: &[u8]) -> Result<PdfCheck, String> {
    let doc = lopdf::Document::load_mem(bytes).map_err(|e| format!("not a PDF: {e}"))?;
    let numbers: Vec<u32> = doc.get_pages().keys().copied().collect();
    let text = doc
        .extract_text(&numbers)
        .map_err(|e| format!("no text: {e}"))?;
    Ok(PdfCheck {
        pages: numbers.len(),
        text,
    })
}

/// The file an invoice is written to.
pub fn pdf_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("invoice-{id}.pdf"))
}

/// `emissao`: prints the invoice, checks the PDF (that its text has the invoice number and
/// that it has the invoice's page count, [`site::invoice_pages`]: else the job fails and is
/// retried), writes it under `dir` (a temporary name, then renamed: a job run twice never
/// leaves half a file).
pub fn emissao(session: &mut Session, job: &Job, dir: &Path) -> Result<Vec<u8>, JobError> {
    let number = site::invoice_number(job.id);
    let ready = format!(
        "document.readyState === 'complete' && document.querySelector('#invoice-no') && \
         document.querySelector('#invoice-no').textContent === '{number}'"
    );
    let rows = open(
        session,
        &path_of("invoice", job),
        &ready,
        "String(document.querySelectorAll('#lines tr').length)",
    )?;
    let bytes = session.print_pdf().map_err(retry)?;
    let check = read_pdf(&bytes).map_err(retry)?;
    if !check.text.contains(&number) {
        return Err(retry(format!(
            "the PDF of invoice {} does not show {number}",
            job.id
        )));
    }
    // The invoice's page count as the site lays it out: a table cut short, or a page
    // printed twice, is a failed job, not a result.
    let pages = usize::from(site::invoice_pages(job.id));
    if check.pages != pages {
        return Err(retry(format!(
            "the PDF of invoice {} has {} page(s), not {pages}",
            job.id, check.pages
        )));
    }
    let path = pdf_path(dir, job.id);
    let partial = path.with_extension(format!(
        "pdf.{}-{}.part",
        std::process::id(),
        session.worker
    ));
    std::fs::write(&partial, &bytes).map_err(retry)?;
    std::fs::rename(&partial, &path).map_err(retry)?;
    let result = serde_json::json!({
        "id": job.id,
        "queue": "emissao",
        "worker": session.worker,
        "path": path,
        "bytes": bytes.len(),
        "pages": check.pages,
        "rows": rows.parse::<u64>().unwrap_or(0),
    });
    Ok(result.to_string().into_bytes())
}
