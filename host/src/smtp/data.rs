//! DATA content: dot-unstuffing, the end-of-data sequence and the
//! SMTP-smuggling guard (RFC 5321 4.1.1.4 and 4.5.2; CVE-2023-51764).
//!
//! Hand-written rather than smtp-proto's `DataReceiver` because that one
//! neither reports bare CR or LF (which we must refuse) nor recognises a
//! lone "." as the first line (an empty message would never end).
//!
//! Policy: only `<CR><LF>.<CR><LF>` ends the data, where the first CRLF is
//! a real line end: a line ended by a bare LF, or a CRLF right after a bare
//! CR, does not start a line that could end the data. A message holding
//! any bare CR or LF is refused (521 5.5.2) and the connection closed, so
//! whatever a smuggler put after his sequence is never read as commands.
//! Text lines longer than 1000 octets are accepted and kept as they are
//! (as Postfix and Exchange do).

use memchr::memchr2;

/// Reads DATA content in pieces, as it arrives.
#[derive(Debug)]
pub struct DotReader {
    at_line_start: bool,
    after_bare_cr: bool,
    /// A bare CR or LF was seen.
    pub bare_line_ending: bool,
    /// The content outgrew `max`; the rest is read but not kept.
    pub overflow: bool,
    max: usize,
    kept: usize,
}

/// What one call to [`DotReader::feed`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// Input bytes used; the rest must be offered again with more data.
    pub consumed: usize,
    /// The end-of-data line was seen (and consumed).
    pub done: bool,
}

impl DotReader {
    /// A reader that keeps at most `max` content bytes.
    pub fn new(max: usize) -> Self {
        DotReader {
            at_line_start: true,
            after_bare_cr: false,
            bare_line_ending: false,
            overflow: false,
            max,
            kept: 0,
        }
    }

    fn keep(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.kept + bytes.len() > self.max {
            self.overflow = true;
            return;
        }
        self.kept += bytes.len();
        out.extend_from_slice(bytes);
    }

    /// Takes as much of `input` as can be decided, appending unstuffed
    /// content to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Fed {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            if self.at_line_start {
                match rest {
                    [] | [b'.'] | [b'.', b'\r'] => {
                        return Fed {
                            consumed: pos,
                            done: false,
                        };
                    }
                    [b'.', b'\r', b'\n', ..] => {
                        return Fed {
                            consumed: pos + 3,
                            done: true,
                        };
                    }
                    // Dot-stuffing: drop the first dot of the line.
                    [b'.', ..] => pos += 1,
                    _ => {}
                }
                self.at_line_start = false;
                continue;
            }
            let Some(i) = memchr2(b'\r', b'\n', rest) else {
                self.keep(out, rest);
                return Fed {
                    consumed: input.len(),
                    done: false,
                };
            };
            if rest[i] == b'\n' {
                // A bare LF: kept, flagged, and it does not start a line.
                self.bare_line_ending = true;
                self.after_bare_cr = false;
                self.keep(out, &rest[..=i]);
                pos += i + 1;
                continue;
            }
            match rest.get(i + 1) {
                None => {
                    // A CR at the end of the input: wait for what follows.
                    self.keep(out, &rest[..i]);
                    return Fed {
                        consumed: pos + i,
                        done: false,
                    };
                }
                Some(b'\n') => {
                    self.keep(out, &rest[..i + 2]);
                    self.at_line_start = !self.after_bare_cr;
                    self.after_bare_cr = false;
                    pos += i + 2;
                }
                Some(_) => {
                    self.bare_line_ending = true;
                    self.after_bare_cr = true;
                    self.keep(out, &rest[..=i]);
                    pos += i + 1;
                }
            }
        }
    }
}

/// Whether `bytes` holds a CR not followed by LF or an LF not preceded by
/// CR (for BDAT content, which has no dot-stuffing).
pub fn has_bare_line_ending(bytes: &[u8]) -> bool {
    let mut i = 0;
    while let Some(off) = memchr2(b'\r', b'\n', &bytes[i..]) {
        let j = i + off;
        // A CRLF pair is stepped over whole, so any LF found here is bare.
        if bytes[j] == b'\n' || bytes.get(j + 1) != Some(&b'\n') {
            return true;
        }
        i = j + 2;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes, as a slow client would.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Option<usize>, bool) {
        let mut reader = DotReader::new(1 << 20);
        let mut out = Vec::new();
        let mut buffered: Vec<u8> = Vec::new();
        let mut offered = 0;
        for chunk in input.chunks(step) {
            buffered.extend_from_slice(chunk);
            offered += chunk.len();
            let fed = reader.feed(&buffered, &mut out);
            buffered.drain(..fed.consumed);
            if fed.done {
                return (out, Some(offered - buffered.len()), reader.bare_line_ending);
            }
        }
        (out, None, reader.bare_line_ending)
    }

    #[test]
    fn end_of_data_and_dot_stuffing_in_any_split() {
        /// (input, content, where the data ends, bare CR/LF seen)
        type Case = (&'static [u8], &'static [u8], Option<usize>, bool);
        let cases: &[Case] = &[
            (b".\r\n", b"", Some(3), false),
            (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", Some(6), false),
            (b"..x\r\n.\r\n", b".x\r\n", Some(8), false),
            (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", Some(10), false),
            (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n", Some(10), false),
            // SMTP smuggling: none of these ends the data.
            (b"a\n.\nb\r\n", b"a\n.\nb\r\n", None, true),
            (
                b"a\n.\r\nMAIL FROM:<x@y>\r\n",
                b"a\n.\r\nMAIL FROM:<x@y>\r\n",
                None,
                true,
            ),
            (
                b"a\r.\r\nRCPT TO:<x@y>\r\n",
                b"a\r.\r\nRCPT TO:<x@y>\r\n",
                None,
                true,
            ),
            (b"a\r\r\n.\r\nDATA\r\n", b"a\r\r\n.\r\nDATA\r\n", None, true),
            (b"a\r\n.\n", b"a\r\n\n", None, true),
            // ...but a genuine end after them does, with the flag set.
            (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n", Some(11), true),
        ];
        for (input, content, end, bare) in cases {
            for step in [1, 2, 3, input.len()] {
                let (out, got_end, got_bare) = run(input, step);
                assert_eq!(&out[..], *content, "content of {input:?} fed by {step}");
                assert_eq!(got_end, *end, "end of {input:?} fed by {step}");
                assert_eq!(got_bare, *bare, "bare flag of {input:?} fed by {step}");
            }
        }
    }

    #[test]
    fn content_past_the_limit_is_dropped_but_the_end_still_found() {
        let mut reader = DotReader::new(4);
        let mut out = Vec::new();
        let fed = reader.feed(b"12345678\r\n.\r\n", &mut out);
        assert!(fed.done);
        assert!(reader.overflow);
        assert!(out.len() <= 4);
    }

    #[test]
    fn bare_line_endings_in_bdat_content() {
        assert!(!has_bare_line_ending(b"a\r\nb\r\n"));
        assert!(!has_bare_line_ending(b""));
        assert!(has_bare_line_ending(b"a\nb"));
        assert!(has_bare_line_ending(b"a\rb"));
        assert!(has_bare_line_ending(b"a\r\r\n"));
        assert!(has_bare_line_ending(b"\n"));
        assert!(has_bare_line_ending(b"a\r"));
    }
}
