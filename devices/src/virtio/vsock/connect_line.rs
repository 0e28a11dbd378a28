// SPDX-License-Identifier: Apache-2.0
//! The first line a host client sends on the hybrid socket, Firecracker's
//! `CONNECT <port>\n`: the guest port it wants. The word is matched in any
//! case (Kata's runtime-rs sends `connect 1024\n`); one space; the port in
//! decimal digits, a `u32`; a newline. Anything else closes the client.

/// Longest line accepted, newline included (`CONNECT 4294967295\n` is 19).
pub const MAX_CONNECT_LINE: usize = 32;

/// The command word.
const WORD: &[u8] = b"connect";

/// Why a client's first line is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectLineError {
    /// No newline within [`MAX_CONNECT_LINE`] bytes.
    #[error("no newline within {MAX_CONNECT_LINE} bytes")]
    TooLong,
    /// The line is not `CONNECT <port>`.
    #[error("not a CONNECT line")]
    NotConnect,
    /// The port is not a decimal `u32`.
    #[error("bad port in the CONNECT line")]
    BadPort,
}

/// Parses one line, `line` ending with its newline: the guest port.
pub fn parse_connect_line(line: &[u8]) -> Result<u32, ConnectLineError> {
    if line.len() > MAX_CONNECT_LINE {
        return Err(ConnectLineError::TooLong);
    }
    let line = line
        .strip_suffix(b"\n")
        .ok_or(ConnectLineError::NotConnect)?;
    let (word, rest) = line.split_at(line.len().min(WORD.len()));
    if !word.eq_ignore_ascii_case(WORD) {
        return Err(ConnectLineError::NotConnect);
    }
    let digits = rest
        .strip_prefix(b" ")
        .ok_or(ConnectLineError::NotConnect)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ConnectLineError::BadPort);
    }
    digits.iter().try_fold(0u32, |port, &d| {
        port.checked_mul(10)
            .and_then(|p| p.checked_add(u32::from(d - b'0')))
            .ok_or(ConnectLineError::BadPort)
    })
}

/// What a client's bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineState {
    /// No newline yet: read more.
    Incomplete,
    /// A valid line for this guest port; the bytes after its newline
    /// belong to the stream.
    Connect {
        /// The guest port.
        port: u32,
        /// Bytes the client sent after the newline.
        rest: Vec<u8>,
    },
}

/// Collects a client's bytes until its first line is whole.
#[derive(Debug, Default)]
pub struct LineBuffer {
    bytes: Vec<u8>,
}

impl LineBuffer {
    /// How many more bytes to read at most: enough for the longest line.
    pub fn room(&self) -> usize {
        MAX_CONNECT_LINE.saturating_sub(self.bytes.len())
    }

    /// Adds bytes read from the client.
    pub fn push(&mut self, read: &[u8]) -> Result<LineState, ConnectLineError> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(read);
        match self.bytes[start..].iter().position(|&b| b == b'\n') {
            Some(at) => {
                let end = start + at + 1;
                let port = parse_connect_line(&self.bytes[..end])?;
                Ok(LineState::Connect {
                    port,
                    rest: self.bytes[end..].to_vec(),
                })
            }
            None if self.bytes.len() >= MAX_CONNECT_LINE => Err(ConnectLineError::TooLong),
            None => Ok(LineState::Incomplete),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn lines_are_parsed() {
        use ConnectLineError::*;
        let table: &[(&[u8], Result<u32, ConnectLineError>)] = &[
            (b"CONNECT 52\n", Ok(52)),
            (b"connect 1024\n", Ok(1024)),
            (b"CoNnEcT 0\n", Ok(0)),
            (b"CONNECT 4294967295\n", Ok(u32::MAX)),
            (b"CONNECT 007\n", Ok(7)),
            (b"CONNECT 4294967296\n", Err(BadPort)),
            (b"CONNECT 99999999999999999999\n", Err(BadPort)),
            (b"CONNECT -1\n", Err(BadPort)),
            (b"CONNECT +1\n", Err(BadPort)),
            (b"CONNECT 52 \n", Err(BadPort)),
            (b"CONNECT 5 2\n", Err(BadPort)),
            (b"CONNECT 52\r\n", Err(BadPort)),
            (b"CONNECT \n", Err(BadPort)),
            (b"CONNECT  52\n", Err(BadPort)),
            (b"CONNECT\n", Err(NotConnect)),
            (b"CONNECT52\n", Err(NotConnect)),
            (b"CONNECT\t52\n", Err(NotConnect)),
            (b" CONNECT 52\n", Err(NotConnect)),
            (b"CONNEC 52\n", Err(NotConnect)),
            (b"CONNECTS 52\n", Err(NotConnect)),
            (b"GET / HTTP/1.1\n", Err(NotConnect)),
            (b"CONNECT 52", Err(NotConnect)),
            (b"\n", Err(NotConnect)),
            (b"", Err(NotConnect)),
            (b"\xff\xfe\n", Err(NotConnect)),
            (b"CONNECT 0000000000000000000000052\n", Err(TooLong)),
        ];
        for (line, want) in table {
            assert_eq!(
                &parse_connect_line(line),
                want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn a_line_may_come_in_pieces_and_what_follows_is_the_stream() {
        let mut b = LineBuffer::default();
        assert_eq!(b.push(b"conn"), Ok(LineState::Incomplete));
        assert_eq!(b.push(b"ect 5"), Ok(LineState::Incomplete));
        assert_eq!(
            b.push(b"2\nhello"),
            Ok(LineState::Connect {
                port: 52,
                rest: b"hello".to_vec()
            })
        );
        let mut b = LineBuffer::default();
        assert_eq!(b.push(&[b'x'; 31]), Ok(LineState::Incomplete));
        assert_eq!(b.room(), 1);
        assert_eq!(b.push(b"x"), Err(ConnectLineError::TooLong));
        let mut b = LineBuffer::default();
        assert_eq!(
            b.push(b"garbage\nCONNECT 5\n"),
            Err(ConnectLineError::NotConnect)
        );
    }

    /// The reference: `connect`, any case, one space, ASCII digits whose
    /// value fits a `u32`, a newline; at most [`MAX_CONNECT_LINE`] bytes.
    fn reference(line: &[u8]) -> Option<u32> {
        let s = std::str::from_utf8(line).ok()?;
        if s.len() > MAX_CONNECT_LINE || !s.is_char_boundary(7) {
            return None;
        }
        let (word, rest) = s.split_at(7);
        let digits = rest.strip_prefix(' ')?.strip_suffix('\n')?;
        if !word.eq_ignore_ascii_case("connect") || !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    proptest! {
        #[test]
        fn no_input_panics_and_only_connect_lines_pass(line in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(parse_connect_line(&line).ok(), reference(&line));
            let mut b = LineBuffer::default();
            let _ = b.push(&line);
        }

        #[test]
        fn near_misses_are_judged_like_the_reference(
            word in "[cC][oO][nN][nN][eE][cC][tT]|CONECT|connect ",
            sep in " |  |\t|",
            port in "[0-9]{0,12}|[+-][0-9]{1,3}",
            end in "\n|\r\n|",
        ) {
            let line = format!("{word}{sep}{port}{end}");
            prop_assert_eq!(parse_connect_line(line.as_bytes()).ok(), reference(line.as_bytes()));
        }

        #[test]
        fn every_port_in_any_case_is_accepted(port in any::<u32>(), upper in any::<[bool; 7]>(), rest in "[a-z]{0,5}") {
            let word: String = "connect"
                .chars()
                .zip(upper)
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            let mut b = LineBuffer::default();
            let sent = format!("{word} {port}\n{rest}");
            prop_assert_eq!(
                b.push(sent.as_bytes()),
                Ok(LineState::Connect { port, rest: rest.into_bytes() })
            );
        }
    }
}
