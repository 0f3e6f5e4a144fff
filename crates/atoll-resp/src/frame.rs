//! Requests off the wire: the limits checked before the decoder, then `redis-protocol`'s decoder.
//!
//! A client sends a command as an array of bulk strings (`*3\r\n$3\r\nSET\r\n...`) or, typed in
//! telnet, as an inline line of words. `redis-protocol` decodes any RESP frame, but with no
//! limits of its own: a nested array recurses once per level (a few bytes per level exhaust the
//! stack), a bulk string's length is whatever the client declares, and an incomplete frame is
//! parsed again from its start at every read. So [`next_command`] first walks the frame's
//! *structure* (one array of bulk strings, lengths within [`Limits`]) without copying anything,
//! and hands the decoder only a complete frame of that shape.

use redis_protocol::resp2::types::Resp2Frame as _;

/// What one request may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of one bulk string (an argument): the largest `max_value_bytes` of the
    /// keyspaces; the store checks the key's own keyspace's limit.
    pub max_bulk: usize,
    /// Most bytes of one whole command frame.
    pub max_frame: usize,
    /// Most arguments of one command, the command's name included.
    pub max_args: usize,
    /// Most bytes of one inline command line.
    pub max_inline: usize,
}

/// Arguments of one command beyond its name and key: as many members as one HTTP set update
/// may name.
pub const MAX_ARGS: usize = 10_002;
/// Frame overhead allowed beyond the largest value: the command, its key and options.
pub const FRAME_OVERHEAD: usize = 64 << 10;
/// Longest inline command line.
pub const MAX_INLINE: usize = 64 << 10;
/// Longest length line (`*N` or `$N`): digits of any valid length fit many times over.
const MAX_LENGTH_LINE: usize = 32;

impl Limits {
    /// The limits for values of at most `max_value_bytes`.
    pub fn for_values(max_value_bytes: usize) -> Self {
        Self {
            max_bulk: max_value_bytes,
            max_frame: max_value_bytes.saturating_add(FRAME_OVERHEAD),
            max_args: MAX_ARGS,
            max_inline: MAX_INLINE,
        }
    }
}

/// The next request in a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// More bytes are needed (the buffer holds less than one whole request, within the limits).
    Incomplete,
    /// Nothing to execute (an empty inline line, an empty array): skip `used` bytes.
    Skip { used: usize },
    /// A command's arguments (the first is its name), which took `used` bytes.
    Command { args: Vec<Vec<u8>>, used: usize },
    /// Not a request this front takes, or over a limit: answer `-ERR Protocol error: ...` and
    /// close the connection, executing nothing of it.
    Invalid(String),
}

/// A length line `<prefix>N\r\n` at `buf[at..]`: `Ok(Some((N, end)))`, `Ok(None)` when it is
/// incomplete, `Err` when it is not a number.
fn length_line(buf: &[u8], at: usize, what: &str) -> Result<Option<(i64, usize)>, String> {
    let rest = buf.get(at + 1..).unwrap_or_default();
    let window = &rest[..rest.len().min(MAX_LENGTH_LINE)];
    let Some(cr) = window.iter().position(|b| *b == b'\r') else {
        if rest.len() >= MAX_LENGTH_LINE {
            return Err(format!("invalid {what} length (no end of line)"));
        }
        return Ok(None);
    };
    match rest.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(format!("invalid {what} length (\\r without \\n)")),
    }
    let text = std::str::from_utf8(&rest[..cr]).map_err(|_| format!("invalid {what} length"))?;
    let n: i64 = text
        .parse()
        .map_err(|_| format!("invalid {what} length `{}`", text.escape_default()))?;
    Ok(Some((n, at + 1 + cr + 2)))
}

/// The extent of the array-of-bulk-strings request at the start of `buf`, checked against
/// `limits` as far as the buffer goes.
fn extent(buf: &[u8], limits: &Limits) -> Result<Option<usize>, String> {
    let Some((count, mut at)) = length_line(buf, 0, "multibulk")? else {
        return Ok(None);
    };
    if count <= 0 {
        // `*0` and `*-1`: no command (Redis ignores them too).
        return Ok(Some(at));
    }
    if count as u64 > limits.max_args as u64 {
        return Err(format!(
            "invalid multibulk length: {count} arguments, at most {} here",
            limits.max_args
        ));
    }
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(b) => {
                return Err(format!(
                    "expected '$', got '{}': a command is an array of bulk strings",
                    (*b as char).escape_default()
                ));
            }
        }
        let Some((len, data)) = length_line(buf, at, "bulk")? else {
            return Ok(None);
        };
        if len < 0 || len as u64 > limits.max_bulk as u64 {
            return Err(format!(
                "invalid bulk length {len}: an argument is 0 to {} bytes here",
                limits.max_bulk
            ));
        }
        let end = data + len as usize;
        if end + 2 > limits.max_frame {
            return Err(format!(
                "the command is over {} bytes, the most one command may be here",
                limits.max_frame
            ));
        }
        match buf.get(end..end + 2) {
            None => return Ok(None),
            Some(b"\r\n") => at = end + 2,
            Some(_) => {
                return Err("a bulk string is longer than its declared length".to_string());
            }
        }
    }
    Ok(Some(at))
}

/// The next request at the start of `buf` (see [`Next`]). Never panics, whatever `buf` holds.
pub fn next_command(buf: &[u8], limits: &Limits) -> Next {
    let Some(first) = buf.first() else {
        return Next::Incomplete;
    };
    if *first != b'*' {
        return inline(buf, limits);
    }
    let used = match extent(buf, limits) {
        Ok(Some(used)) => used,
        Ok(None) if buf.len() > limits.max_frame => {
            return Next::Invalid(format!(
                "the command is over {} bytes, the most one command may be here",
                limits.max_frame
            ));
        }
        Ok(None) => return Next::Incomplete,
        Err(e) => return Next::Invalid(e),
    };
    // The structure is known good and complete: the crate decodes it.
    match redis_protocol::resp2::decode::decode(&buf[..used]) {
        Ok(Some((redis_protocol::resp2::types::OwnedFrame::Array(items), n))) if n == used => {
            let mut args = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    redis_protocol::resp2::types::OwnedFrame::BulkString(b) => args.push(b),
                    other => {
                        return Next::Invalid(format!(
                            "expected a bulk string, got {:?}",
                            other.kind()
                        ));
                    }
                }
            }
            if args.is_empty() {
                Next::Skip { used }
            } else {
                Next::Command { args, used }
            }
        }
        Ok(Some((redis_protocol::resp2::types::OwnedFrame::Null, n))) if n == used => {
            Next::Skip { used }
        }
        Ok(_) => Next::Invalid("the frame does not decode as one command".to_string()),
        Err(e) => Next::Invalid(format!("{:?}", e.kind())),
    }
}

/// An inline command: one line of words separated by spaces.
fn inline(buf: &[u8], limits: &Limits) -> Next {
    let window = &buf[..buf.len().min(limits.max_inline)];
    let Some(nl) = window.iter().position(|b| *b == b'\n') else {
        if buf.len() >= limits.max_inline {
            return Next::Invalid("too big inline request".to_string());
        }
        return Next::Incomplete;
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args: Vec<Vec<u8>> = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if args.is_empty() {
        return Next::Skip { used: nl + 1 };
    }
    if args.len() > limits.max_args {
        return Next::Invalid("too many arguments in an inline request".to_string());
    }
    Next::Command { args, used: nl + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_bulk: 16,
            max_frame: 64,
            max_args: 4,
            max_inline: 32,
        }
    }

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_command_frame_decodes_and_every_prefix_is_incomplete() {
        let frame = b"*3\r\n$3\r\nSET\r\n$5\r\nk:a\r\n\r\n$2\r\nv1\r\n";
        // The value may contain CRLF: only the declared length counts.
        assert_eq!(
            next_command(frame, &limits()),
            Next::Command {
                args: vec![b"SET".to_vec(), b"k:a\r\n".to_vec(), b"v1".to_vec()],
                used: frame.len()
            }
        );
        for cut in 0..frame.len() {
            assert_eq!(
                next_command(&frame[..cut], &limits()),
                Next::Incomplete,
                "prefix of {cut} bytes"
            );
        }
        // Pipelined: the first command only.
        let mut two = frame.to_vec();
        two.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        assert!(
            matches!(next_command(&two, &limits()), Next::Command { used, .. } if used == frame.len())
        );
    }

    #[test]
    fn inline_commands_split_on_spaces() {
        assert_eq!(
            next_command(b"GET  sessions:a\r\nrest", &limits()),
            Next::Command {
                args: args(&["GET", "sessions:a"]),
                used: 17
            }
        );
        assert_eq!(next_command(b"\r\n", &limits()), Next::Skip { used: 2 });
        assert_eq!(next_command(b"PING", &limits()), Next::Incomplete);
        assert!(matches!(
            next_command(&[b'x'; 40], &limits()),
            Next::Invalid(m) if m.contains("inline")
        ));
    }

    #[test]
    fn what_is_refused_before_the_decoder() {
        let cases: &[(&[u8], &str)] = &[
            (b"*1\r\n*1\r\n*1\r\n", "array of bulk strings"),
            (b"*2\r\n$1\r\na\r\n:5\r\n", "array of bulk strings"),
            (b"*5\r\n", "multibulk length"),
            (b"*x\r\n", "multibulk length"),
            (b"*1\r\n$17\r\n", "bulk length 17"),
            (b"*1\r\n$-1\r\n", "bulk length -1"),
            (b"*1\r\n$99999999999999999999\r\n", "bulk length"),
            (b"*1\r\n$1\r\nab\r\n", "longer than its declared length"),
            (b"*1\r\x00", "\\r without \\n"),
            (b"*11111111111111111111111111111111111", "no end of line"),
            (
                b"*4\r\n$16\r\n0123456789abcdef\r\n$16\r\n0123456789abcdef\r\n$16\r\n0123456789abcdef\r\n",
                "over 64 bytes",
            ),
        ];
        for (input, want) in cases {
            match next_command(input, &limits()) {
                Next::Invalid(m) => assert!(m.contains(want), "{input:?}: {m}"),
                other => panic!("{input:?}: {other:?}"),
            }
        }
        assert_eq!(next_command(b"*0\r\n", &limits()), Next::Skip { used: 4 });
        assert_eq!(next_command(b"*-1\r\n", &limits()), Next::Skip { used: 5 });
    }

    #[test]
    fn a_deep_nest_is_refused_without_recursion() {
        let deep = b"*1\r\n".repeat(1 << 20);
        let l = Limits::for_values(16 << 20);
        assert!(matches!(next_command(&deep, &l), Next::Invalid(_)));
    }
}
