//! The editor's side of stdio, checked message by message before tower-lsp reads it.
//!
//! tower-lsp drops a message whose body is not valid UTF-8 ("failed to decode message") and
//! goes on: a `didChange` lost that way leaves the document silently out of step with the
//! editor. Neovim sends such bytes when a character is split (a cursor placed inside it). So
//! each message's body is checked here: a valid one passes unchanged; an invalid one is
//! reported to the session ([`Event::InvalidUtf8`]) first — it stops sharing that document and
//! tells the user — and then passes with the invalid bytes replaced by U+FFFD, so that a
//! request among them is still answered.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tower_lsp::lsp_types::Url;

use crate::session::Event;

/// How many bytes of messages may wait between this task and tower-lsp.
const PIPE_BYTES: usize = 1 << 16;

/// Reads LSP messages from `input` and hands them on through the returned reader, checked.
pub fn checked(
    input: impl AsyncRead + Unpin + Send + 'static,
    events: mpsc::UnboundedSender<Event>,
) -> impl AsyncRead {
    let (reader, mut writer) = tokio::io::duplex(PIPE_BYTES);
    tokio::spawn(async move {
        let mut input = BufReader::new(input);
        loop {
            let (header, body) = match read_message(&mut input).await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading from the editor failed");
                    break;
                }
            };
            // A valid message passes as it came, without copying it.
            let (header, body) = match std::str::from_utf8(&body) {
                Ok(_) => (header, body),
                Err(_) => {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    let (method, uri) = what_it_concerns(&text);
                    tracing::warn!(%method, ?uri, "a message from the editor is not valid UTF-8");
                    let _ = events.send(Event::InvalidUtf8 { method, uri });
                    let header = format!("Content-Length: {}\r\n\r\n", text.len());
                    (header.into_bytes(), text.into_bytes())
                }
            };
            if writer.write_all(&header).await.is_err() || writer.write_all(&body).await.is_err() {
                break;
            }
        }
    });
    reader
}

/// The next message: its header as read and its body. A header without a `Content-Length` is
/// passed on as it is, with an empty body (tower-lsp reports it). `None` at the end of input.
async fn read_message(
    input: &mut (impl AsyncBufReadExt + Unpin),
) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut header = Vec::new();
    let mut length = None;
    loop {
        let start = header.len();
        if input.read_until(b'\n', &mut header).await? == 0 {
            return Ok((!header.is_empty()).then(|| (header, Vec::new())));
        }
        let line = String::from_utf8_lossy(&header[start..]);
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = vec![0; length.unwrap_or(0)];
    input.read_exact(&mut body).await?;
    Ok(Some((header, body)))
}

/// The method of a (lossily decoded) message and the document it concerns, if any.
fn what_it_concerns(text: &str) -> (String, Option<Url>) {
    let message: Value = serde_json::from_str(text).unwrap_or_default();
    let method = message["method"]
        .as_str()
        .unwrap_or("a response")
        .to_string();
    let uri = message["params"]["textDocument"]["uri"]
        .as_str()
        .and_then(|u| Url::parse(u).ok());
    (method, uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        [
            format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
            body,
        ]
        .concat()
    }

    #[tokio::test]
    async fn valid_messages_pass_unchanged_and_invalid_ones_are_reported_and_repaired() {
        let valid = br#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#.to_vec();
        let mut invalid = br#"{"jsonrpc":"2.0","method":"textDocument/didChange","params":{"textDocument":{"uri":"file:///w/a.txt","version":2},"contentChanges":[{"text":"x"#.to_vec();
        invalid.push(0xe4);
        invalid.extend_from_slice(br#""}]}}"#);
        let input = [framed(&valid), framed(&invalid), framed(&valid)].concat();
        let (events, mut received) = mpsc::unbounded_channel();
        let mut output = checked(std::io::Cursor::new(input), events);
        let mut all = String::new();
        output.read_to_string(&mut all).await.unwrap();
        let repaired = String::from_utf8_lossy(&invalid).into_owned();
        let expected = [framed(&valid), framed(repaired.as_bytes()), framed(&valid)].concat();
        assert_eq!(all.as_bytes(), expected);
        match received.recv().await {
            Some(Event::InvalidUtf8 { method, uri }) => {
                assert_eq!(method, "textDocument/didChange");
                assert_eq!(uri.unwrap().as_str(), "file:///w/a.txt");
            }
            _ => panic!("the invalid message was not reported"),
        }
        assert!(received.try_recv().is_err(), "one report");
    }
}
