//! The workspace's disk quota, enforced where the guest writes: `wasi:filesystem/types`.
//!
//! wasmtime-wasi's filesystem is linked as usual, then its `types` interface is shadowed by
//! [`QuotaFsView`], which delegates every function to wasmtime-wasi's own implementation and
//! charges the attempt's [`DiskQuota`] for what grows a file: `write` past the end,
//! `set-size` upward, and every byte a `write-via-stream`/`append-via-stream` stream puts
//! past the end of its file (the stream is wrapped in a [`QuotaStream`]). Truncations and
//! deletions of regular files give bytes back. A write that does not fit fails in the guest
//! with `insufficient-space` and marks the call, which then fails naming the quota even if
//! the guest swallows the error.
//!
//! Sizes are apparent sizes (a sparse file counts in full), so a task cannot plant a
//! "small" file that every later copy of the workspace has to materialise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use spade_api::DiskQuota;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemCtxView;
use wasmtime_wasi::p2::bindings::filesystem::types as async_fs;
use wasmtime_wasi::p2::bindings::sync::filesystem::types as fs;
use wasmtime_wasi::p2::bindings::sync::io::streams;
use wasmtime_wasi::p2::{DynOutputStream, FsError, FsResult, OutputStream, Pollable, StreamError, StreamResult};

use crate::host::HostState;

/// The quota of one call, and whether the call ran into it.
#[derive(Clone)]
pub(crate) struct DiskGuard {
    pub quota: DiskQuota,
    exceeded: Arc<AtomicBool>,
}

impl DiskGuard {
    pub fn new(quota: DiskQuota) -> Self {
        DiskGuard { quota, exceeded: Arc::default() }
    }

    /// Whether a write of this call was refused for lack of quota.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }

    fn charge(&self, bytes: u64) -> bool {
        let ok = self.quota.charge(bytes);
        if !ok {
            self.exceeded.store(true, Ordering::SeqCst);
        }
        ok
    }

    fn refuse() -> FsError {
        async_fs::ErrorCode::InsufficientSpace.into()
    }
}

/// The `HasData` of the shadowing `types` interface.
struct QuotaFs;

impl HasData for QuotaFs {
    type Data<'a> = QuotaFsView<'a>;
}

pub(crate) struct QuotaFsView<'a> {
    fs: WasiFilesystemCtxView<'a>,
    disk: &'a DiskGuard,
}

/// Replace wasmtime-wasi's `wasi:filesystem/types` (already linked) with the quota-keeping
/// one. Shadowing keeps every other interface as wasmtime-wasi links it.
pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let result = fs::add_to_linker::<HostState, QuotaFs>(linker, |s: &mut HostState| QuotaFsView {
        fs: WasiFilesystemCtxView { ctx: s.wasi.filesystem(), table: &mut s.table },
        disk: &s.disk,
    });
    linker.allow_shadowing(false);
    result
}

/// A second handle to the same descriptor (the bindings pass borrows by value).
fn again<T: 'static>(r: &Resource<T>) -> Resource<T> {
    Resource::new_borrow(r.rep())
}

impl QuotaFsView<'_> {
    fn size_of(&mut self, fd: &Resource<fs::Descriptor>) -> FsResult<u64> {
        Ok(fs::HostDescriptor::stat(&mut self.fs, again(fd))?.size)
    }

    /// Size of a regular file that is the only link to its data (`None` otherwise): what
    /// removing or replacing `path` frees.
    fn freed_by_removing(&mut self, fd: &Resource<fs::Descriptor>, path: &str) -> Option<u64> {
        let st = fs::HostDescriptor::stat_at(&mut self.fs, again(fd), fs::PathFlags::empty(), path.to_string()).ok()?;
        (st.type_ == fs::DescriptorType::RegularFile && st.link_count == 1).then_some(st.size)
    }

    fn wrap(
        &mut self,
        stream: Resource<streams::OutputStream>,
        pos: u64,
        end: u64,
    ) -> FsResult<Resource<streams::OutputStream>> {
        let inner: DynOutputStream = self.fs.table.delete(stream)?;
        let wrapped: DynOutputStream = Box::new(QuotaStream { inner, disk: self.disk.clone(), pos, end });
        Ok(self.fs.table.push(wrapped)?)
    }
}

impl fs::Host for QuotaFsView<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<fs::ErrorCode> {
        fs::Host::convert_error_code(&mut self.fs, err)
    }

    fn filesystem_error_code(&mut self, err: Resource<streams::Error>) -> wasmtime::Result<Option<fs::ErrorCode>> {
        fs::Host::filesystem_error_code(&mut self.fs, err)
    }
}

impl fs::HostDescriptor for QuotaFsView<'_> {
    fn advise(&mut self, fd: Resource<fs::Descriptor>, offset: u64, len: u64, advice: fs::Advice) -> FsResult<()> {
        fs::HostDescriptor::advise(&mut self.fs, fd, offset, len, advice)
    }

    fn sync_data(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<()> {
        fs::HostDescriptor::sync_data(&mut self.fs, fd)
    }

    fn get_flags(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::DescriptorFlags> {
        fs::HostDescriptor::get_flags(&mut self.fs, fd)
    }

    fn get_type(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::DescriptorType> {
        fs::HostDescriptor::get_type(&mut self.fs, fd)
    }

    fn set_size(&mut self, fd: Resource<fs::Descriptor>, size: u64) -> FsResult<()> {
        let before = self.size_of(&fd)?;
        if size > before && !self.disk.charge(size - before) {
            return Err(DiskGuard::refuse());
        }
        match fs::HostDescriptor::set_size(&mut self.fs, fd, size) {
            Ok(()) => {
                if size < before {
                    self.disk.quota.refund(before - size);
                }
                Ok(())
            }
            Err(e) => {
                if size > before {
                    self.disk.quota.refund(size - before);
                }
                Err(e)
            }
        }
    }

    fn set_times(
        &mut self,
        fd: Resource<fs::Descriptor>,
        atim: fs::NewTimestamp,
        mtim: fs::NewTimestamp,
    ) -> FsResult<()> {
        fs::HostDescriptor::set_times(&mut self.fs, fd, atim, mtim)
    }

    fn read(&mut self, fd: Resource<fs::Descriptor>, len: u64, offset: u64) -> FsResult<(Vec<u8>, bool)> {
        fs::HostDescriptor::read(&mut self.fs, fd, len, offset)
    }

    fn write(&mut self, fd: Resource<fs::Descriptor>, buf: Vec<u8>, offset: u64) -> FsResult<u64> {
        let before = self.size_of(&fd)?;
        let growth = offset.saturating_add(buf.len() as u64).saturating_sub(before);
        if !self.disk.charge(growth) {
            return Err(DiskGuard::refuse());
        }
        let result = fs::HostDescriptor::write(&mut self.fs, fd, buf, offset);
        if result.is_err() {
            self.disk.quota.refund(growth);
        }
        result
    }

    fn read_directory(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<Resource<fs::DirectoryEntryStream>> {
        fs::HostDescriptor::read_directory(&mut self.fs, fd)
    }

    fn sync(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<()> {
        fs::HostDescriptor::sync(&mut self.fs, fd)
    }

    fn create_directory_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<()> {
        fs::HostDescriptor::create_directory_at(&mut self.fs, fd, path)
    }

    fn stat(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::DescriptorStat> {
        fs::HostDescriptor::stat(&mut self.fs, fd)
    }

    fn stat_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        flags: fs::PathFlags,
        path: String,
    ) -> FsResult<fs::DescriptorStat> {
        fs::HostDescriptor::stat_at(&mut self.fs, fd, flags, path)
    }

    fn set_times_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        flags: fs::PathFlags,
        path: String,
        atim: fs::NewTimestamp,
        mtim: fs::NewTimestamp,
    ) -> FsResult<()> {
        fs::HostDescriptor::set_times_at(&mut self.fs, fd, flags, path, atim, mtim)
    }

    fn link_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        old_flags: fs::PathFlags,
        old_path: String,
        new_fd: Resource<fs::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        fs::HostDescriptor::link_at(&mut self.fs, fd, old_flags, old_path, new_fd, new_path)
    }

    fn open_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        flags: fs::PathFlags,
        path: String,
        oflags: fs::OpenFlags,
        dflags: fs::DescriptorFlags,
    ) -> FsResult<Resource<fs::Descriptor>> {
        // Opening with `truncate` empties an existing file: give its bytes back.
        let freed = if oflags.contains(fs::OpenFlags::TRUNCATE) { self.freed_by_removing(&fd, &path) } else { None };
        let opened = fs::HostDescriptor::open_at(&mut self.fs, fd, flags, path, oflags, dflags)?;
        if let Some(bytes) = freed {
            self.disk.quota.refund(bytes);
        }
        Ok(opened)
    }

    fn drop(&mut self, fd: Resource<fs::Descriptor>) -> wasmtime::Result<()> {
        fs::HostDescriptor::drop(&mut self.fs, fd)
    }

    fn readlink_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<String> {
        fs::HostDescriptor::readlink_at(&mut self.fs, fd, path)
    }

    fn remove_directory_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<()> {
        fs::HostDescriptor::remove_directory_at(&mut self.fs, fd, path)
    }

    fn rename_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        old_path: String,
        new_fd: Resource<fs::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // A rename over an existing file frees the replaced one.
        let freed = self.freed_by_removing(&new_fd, &new_path);
        fs::HostDescriptor::rename_at(&mut self.fs, fd, old_path, new_fd, new_path)?;
        if let Some(bytes) = freed {
            self.disk.quota.refund(bytes);
        }
        Ok(())
    }

    fn symlink_at(&mut self, fd: Resource<fs::Descriptor>, src: String, dest: String) -> FsResult<()> {
        fs::HostDescriptor::symlink_at(&mut self.fs, fd, src, dest)
    }

    fn unlink_file_at(&mut self, fd: Resource<fs::Descriptor>, path: String) -> FsResult<()> {
        let freed = self.freed_by_removing(&fd, &path);
        fs::HostDescriptor::unlink_file_at(&mut self.fs, fd, path)?;
        if let Some(bytes) = freed {
            self.disk.quota.refund(bytes);
        }
        Ok(())
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<fs::Descriptor>,
        offset: u64,
    ) -> FsResult<Resource<streams::InputStream>> {
        fs::HostDescriptor::read_via_stream(&mut self.fs, fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<fs::Descriptor>,
        offset: u64,
    ) -> FsResult<Resource<streams::OutputStream>> {
        let end = self.size_of(&fd)?;
        let stream = fs::HostDescriptor::write_via_stream(&mut self.fs, fd, offset)?;
        self.wrap(stream, offset, end)
    }

    fn append_via_stream(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<Resource<streams::OutputStream>> {
        let end = self.size_of(&fd)?;
        let stream = fs::HostDescriptor::append_via_stream(&mut self.fs, fd)?;
        // Every appended byte grows the file.
        self.wrap(stream, end, end)
    }

    fn is_same_object(&mut self, a: Resource<fs::Descriptor>, b: Resource<fs::Descriptor>) -> wasmtime::Result<bool> {
        fs::HostDescriptor::is_same_object(&mut self.fs, a, b)
    }

    fn metadata_hash(&mut self, fd: Resource<fs::Descriptor>) -> FsResult<fs::MetadataHashValue> {
        fs::HostDescriptor::metadata_hash(&mut self.fs, fd)
    }

    fn metadata_hash_at(
        &mut self,
        fd: Resource<fs::Descriptor>,
        flags: fs::PathFlags,
        path: String,
    ) -> FsResult<fs::MetadataHashValue> {
        fs::HostDescriptor::metadata_hash_at(&mut self.fs, fd, flags, path)
    }
}

impl fs::HostDirectoryEntryStream for QuotaFsView<'_> {
    fn read_directory_entry(
        &mut self,
        stream: Resource<fs::DirectoryEntryStream>,
    ) -> FsResult<Option<fs::DirectoryEntry>> {
        fs::HostDirectoryEntryStream::read_directory_entry(&mut self.fs, stream)
    }

    fn drop(&mut self, stream: Resource<fs::DirectoryEntryStream>) -> wasmtime::Result<()> {
        fs::HostDirectoryEntryStream::drop(&mut self.fs, stream)
    }
}

/// A file's output stream that charges the quota for the bytes it puts past the end of
/// the file (as it was when the stream was opened, then as the stream grew it).
struct QuotaStream {
    inner: DynOutputStream,
    disk: DiskGuard,
    /// Where the next byte goes.
    pos: u64,
    /// The file's end as far as this stream knows.
    end: u64,
}

#[wasmtime_wasi::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        let new_pos = self.pos.saturating_add(bytes.len() as u64);
        let growth = new_pos.saturating_sub(self.end);
        if !self.disk.charge(growth) {
            // An OS error code, so that `filesystem-error-code` tells the guest ENOSPC (the
            // host reports the quota itself when the call ends).
            let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
            return Err(StreamError::LastOperationFailed(full.into()));
        }
        match self.inner.write(bytes) {
            Ok(()) => {
                self.pos = new_pos;
                self.end = self.end.max(new_pos);
                Ok(())
            }
            Err(e) => {
                self.disk.quota.refund(growth);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}
