//! A file mapped `MAP_SHARED` into our address space, guarded against a
//! peer that truncates the file under us.

use std::fs::File;
use std::io;

use memmap2::{MmapOptions, MmapRaw};

use super::sigbus;

/// `len` bytes of a file, mapped shared, read-write (`mmap(2)`), and
/// watched by the [`sigbus`] guard.
///
/// **Process-wide side effect**: the first `Mapped` installs a `SIGBUS`
/// handler for the whole process (see [`sigbus`]). If the file shrinks
/// under us, the mapping turns into private zero pages the moment we touch
/// a page past the end: nothing read from it afterwards may be used, which
/// [`Mapped::intact`] tells.
pub struct Mapped {
    map: MmapRaw,
    slot: usize,
}

impl Mapped {
    pub fn new(file: &File, len: usize) -> io::Result<Mapped> {
        let map = MmapOptions::new().len(len).map_raw(file)?;
        let slot = sigbus::watch(map.as_mut_ptr() as usize, len)?;
        Ok(Mapped { map, slot })
    }

    pub fn ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// Has the file been truncated under us (seen at a touch past its end)?
    pub fn truncated(&self) -> bool {
        sigbus::hit(self.slot)
    }

    /// Touch the first and the last page (a truncation always takes the
    /// last one): is the whole mapping still backed by the file?
    pub fn probe(&self) -> bool {
        // SAFETY: both bytes lie within the mapping; a page gone past the
        // end of the file is replaced by the guard, not fatal.
        unsafe {
            std::ptr::read_volatile(self.ptr());
            std::ptr::read_volatile(self.ptr().add(self.size() - 1));
        }
        !self.truncated()
    }

    /// An error saying what was lost if the file was truncated under us;
    /// `what` names it ("the session region").
    pub fn intact(&self, what: &str) -> io::Result<()> {
        if self.truncated() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{what} was truncated under us (by the peer?): what it held is lost; ending the session"
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // Before the mapping goes (the fields drop after this).
        sigbus::forget(self.slot);
    }
}
