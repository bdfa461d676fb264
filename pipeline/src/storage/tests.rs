//! Unit tests of `storage`.
use super::*;

#[test]
fn secrets_never_reach_debug_output_or_urls_in_messages() {
    let options = StorageOptions {
        endpoint: Some("http://user:hunter2@127.0.0.1:9000".into()),
        options: [("aws_secret_access_key".to_string(), "hunter2".to_string())].into(),
        ..Default::default()
    };
    let shown = format!("{options:?}");
    assert!(
        shown.contains("aws_secret_access_key") && !shown.contains("hunter2"),
        "{shown}"
    );
    assert_eq!(
        redact_url("https://acct.blob.core.windows.net/c/x.jsonl?sv=2024&sig=hunter2"),
        "https://acct.blob.core.windows.net/c/x.jsonl?***"
    );
    assert_eq!(redact_url("s3://bucket/out"), "s3://bucket/out");
    assert_eq!(redact_url("/local/path"), "/local/path");
}

#[test]
fn server_and_network_failures_are_transient_request_errors_are_not() {
    let generic = |store: &'static str, message: &str| object_store::Error::Generic {
        store,
        source: message.to_string().into(),
    };
    let status = |code: &str| format!("Server returned non-2xx status code: {code}: body");
    assert!(is_transient(&generic(
        "S3",
        &status("503 Service Unavailable")
    )));
    assert!(is_transient(&generic(
        "S3",
        &status("429 Too Many Requests")
    )));
    assert!(is_transient(&generic(
        "MicrosoftAzure",
        "error sending request"
    )));
    assert!(!is_transient(&generic("S3", &status("400 Bad Request"))));
    assert!(!is_transient(&generic("LocalFileSystem", "disk full")));
    assert!(!is_transient(&object_store::Error::NotFound {
        path: "x".into(),
        source: "gone".into(),
    }));
}

#[test]
fn memory_urls_share_one_store_per_name() {
    let rt = io_runtime().unwrap();
    let a = Location::parse("memory://storage-test/out", true).unwrap();
    rt.block_on(a.put("x/y.txt", b"hello".to_vec())).unwrap();
    let b = Location::parse("memory://storage-test/out/x", false).unwrap();
    assert_eq!(
        rt.block_on(b.get("y.txt")).unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    let listed = rt.block_on(a.list("")).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, "x/y.txt");
    let other = Location::parse("memory://other-test/out", true).unwrap();
    assert_eq!(rt.block_on(other.get("x/y.txt")).unwrap(), None);
}

#[test]
fn create_is_once_and_recognises_its_own_object() {
    let rt = io_runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let loc = Location::parse(dir.path().to_str().unwrap(), true).unwrap();
    let ours = |b: &[u8]| b == b"writer-a";
    assert_eq!(
        rt.block_on(loc.create("m.json", b"writer-a".to_vec(), ours))
            .unwrap(),
        Created::Ours
    );
    // A retry of the same create (its first reply lost) finds its own object.
    assert_eq!(
        rt.block_on(loc.create("m.json", b"writer-a".to_vec(), ours))
            .unwrap(),
        Created::Ours
    );
    let theirs = |b: &[u8]| b == b"writer-b";
    assert_eq!(
        rt.block_on(loc.create("m.json", b"writer-b".to_vec(), theirs))
            .unwrap(),
        Created::Theirs(bytes::Bytes::from_static(b"writer-a"))
    );
}

#[test]
fn large_files_are_uploaded_in_parts_and_read_back_whole() {
    let rt = io_runtime().unwrap();
    let loc = Location::parse("memory://multipart-test/", true).unwrap();
    let bytes: Vec<u8> = (0..MULTIPART_THRESHOLD + 12345)
        .map(|i| (i % 251) as u8)
        .collect();
    rt.block_on(loc.put("big.bin", bytes.clone())).unwrap();
    assert_eq!(rt.block_on(loc.get("big.bin")).unwrap().unwrap(), bytes);
}

#[test]
fn unknown_storage_options_are_refused_by_name() {
    let url = url::Url::parse("s3://bucket/prefix").unwrap();
    let options = StorageOptions {
        options: [("aws_no_such_thing".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    let err = store_for_url(&url, &options).err().unwrap();
    assert!(err.contains("aws_no_such_thing"), "{err}");
}
