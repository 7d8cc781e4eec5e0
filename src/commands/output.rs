//! Writing a command's lines. `println!` would panic once the reader has
//! gone away (`dlq list | head -1`); then no one is left to tell, so a
//! closed stdout or stderr is ignored.

use std::fmt::Arguments;
use std::io::Write as _;

/// A line of the command's result, on stdout.
pub fn say(line: Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// A line of progress or a warning, on stderr.
pub fn note(line: Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
