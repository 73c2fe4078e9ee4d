"""Projects and outputs in an object store: an S3 server (moto) on 127.0.0.1, never a real cloud.

Each test proves a number against ground truth: pixels read from ``s3://`` equal
the local ones, and the server's own count shows that a region read fetches
only the chunks (objects) it touches.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="object storage needs s3fs: pip install '.[s3]'")
pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (the test extra)")

import tilefuse  # noqa: E402
from s3server import S3Server  # noqa: E402
from tilefuse import _storage  # noqa: E402
from tilefuse.errors import MissingDataError, ProjectFormatError  # noqa: E402

BUCKET = "tilefuse-test"


@pytest.fixture(scope="session")
def s3():
    """The server, with the environment every S3 client reads (endpoint, dummy credentials)."""
    server = S3Server()
    import fsspec

    fsspec.get_filesystem_class("s3").clear_instance_cache()  # instances made for another endpoint
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", server.endpoint)
        # tilefuse's own instance, whose session is closed at exit (one made here was dropped at the end with
        # s3fs's 0.1 s wait to close it: "Unclosed client session" under load)
        _storage.filesystem(f"s3://{BUCKET}")[0].mkdir(BUCKET)
        yield server
        fsspec.get_filesystem_class("s3").clear_instance_cache()
    server.stop()


def _tiles(shape=(16, 64, 64), n=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4000, size=shape, dtype=np.uint16) for _ in range(n)]


def _upload(local_dir, url):
    fs, path = _storage.filesystem(url)
    fs.put(str(local_dir) + "/", path, recursive=True)


@pytest.fixture(scope="module")
def zarr_project(s3, tmp_path_factory):
    """A 2-tile OME-Zarr project (8^3 chunks... 16x32x32 blocks) written locally, then uploaded."""
    local = tmp_path_factory.mktemp("zproj")
    images = _tiles()
    tilefuse.write_project(local / "dataset.xml", images, [(0, 0, 0), (0, 0, 48)], format="zarr",
                           chunks=(8, 16, 16), factors=[(1, 1, 1), (2, 2, 2)], compression="zstd")
    _upload(local, f"s3://{BUCKET}/zproj")
    return local, f"s3://{BUCKET}/zproj", images


def test_open_project_from_s3_reads_the_same_pixels(zarr_project):
    local, url, images = zarr_project
    project = tilefuse.open_project(f"{url}/dataset.xml")
    assert project.path == f"{url}/dataset.xml"
    assert project.base_dir == url
    for view, truth in zip(sorted(project.views), images):
        project.check_view(view)
        np.testing.assert_array_equal(project.image(view).compute(), truth)
    # level 1 too, the same as the local copy
    view = sorted(project.views)[1]
    here = tilefuse.open_project(local / "dataset.xml")
    np.testing.assert_array_equal(project.image(view, level=1).compute(), here.image(view, level=1).compute())


def test_region_read_is_ranged(zarr_project, s3, monkeypatch):
    """A region of one chunk fetches that chunk, not the image: counted by the server."""
    monkeypatch.setattr(_storage, "REMOTE_IDENTITY_SECONDS", 600)  # no re-check of the metadata in between
    _, url, images = zarr_project
    project = tilefuse.open_project(f"{url}/dataset.xml")
    view = sorted(project.views)[0]
    loader = project.loader
    loader.read(view, 0, (slice(0, 1),) * 3)  # metadata fetched and cached
    s3.served.reset()
    region = loader.read(view, 0, (slice(8, 16), slice(16, 32), slice(32, 48)))
    region_requests, region_gets, region_bytes = sum(s3.served.requests.values()), s3.served.gets, s3.served.body_bytes
    np.testing.assert_array_equal(region, images[0][8:16, 16:32, 32:48])
    s3.served.reset()
    whole = loader.read(view, 0, (slice(None),) * 3)
    whole_gets, whole_bytes = s3.served.gets, s3.served.body_bytes
    np.testing.assert_array_equal(whole, images[0])
    n_chunks = (16 // 8) * (64 // 16) * (64 // 16)
    # the view is a sharded Zarr v3 array (BigStitcher's container, 1x4x4 chunks per shard): the region
    # costs the shard's index and its one chunk, two ranged GETs, not even a HEAD
    assert region_requests == region_gets == 2, s3.served.keys
    assert whole_gets == sum(s3.served.requests.values()) == n_chunks // 16  # each shard whole, one GET
    assert region_bytes < 2 * whole_bytes / n_chunks  # one chunk of 32 and a 260-byte index


def test_bigstitcher_s3bucket_loader_reads_the_bucket(zarr_project):
    """Version 1.0's <s3bucket> + <zarr> name s3://bucket/<zarr>/ (BigStitcher's AllenOMEZarrLoader)."""
    from lxml import etree

    from tilefuse.loaders._zarr import OmeZarrLoader
    from tilefuse.project.views import ViewId

    local, _, images = zarr_project
    el = etree.fromstring(
        f'<ImageLoader format="bdv.multimg.zarr" version="1.0"><s3bucket>{BUCKET}</s3bucket>'
        '<zarr type="absolute">zproj/dataset.ome.zarr</zarr><zgroups>'
        '<zgroup setup="0" timepoint="0"><path>s0-t0.zarr</path></zgroup>'
        '<zgroup setup="1" timepoint="0"><path>s1-t0.zarr</path></zgroup></zgroups></ImageLoader>')
    loader = OmeZarrLoader.from_xml(el, local, None)
    for setup, truth in enumerate(images):
        view = ViewId(0, setup)
        loader.check_view(view)
        np.testing.assert_array_equal(loader.read(view, 0, (slice(None),) * 3), truth)


def test_n5_project_from_s3(s3, tmp_path, monkeypatch):
    monkeypatch.setattr(_storage, "REMOTE_IDENTITY_SECONDS", 600)
    images = _tiles(shape=(8, 32, 32), seed=1)
    tilefuse.write_project(tmp_path / "dataset.xml", images, [(0, 0, 0), (0, 0, 24)], format="n5",
                           chunks=(8, 16, 16), factors=[(1, 1, 1)], compression="gzip")
    url = f"s3://{BUCKET}/n5proj"
    _upload(tmp_path, url)
    project = tilefuse.open_project(f"{url}/dataset.xml")
    for view, truth in zip(sorted(project.views), images):
        project.check_view(view)
        np.testing.assert_array_equal(project.image(view).compute(), truth)
    view = sorted(project.views)[0]
    project.loader.read(view, 0, (slice(0, 1),) * 3)
    s3.served.reset()
    region = project.loader.read(view, 0, (slice(0, 8), slice(16, 32), slice(0, 16)))
    np.testing.assert_array_equal(region, images[0][:, 16:32, :16])
    assert sum(s3.served.requests.values()) == s3.served.gets == 1, s3.served.keys  # one block (4 in the image)


def test_save_xml_to_s3_keeps_backups_and_reopens(zarr_project):
    local, url, _ = zarr_project
    project = tilefuse.open_project(f"{url}/dataset.xml")
    target = f"{url}/copy.xml"
    project.save(target)
    project.save(target)  # the first becomes copy.xml~1
    fs, key = _storage.filesystem(target)
    assert fs.exists(f"{key}~1")
    again = tilefuse.open_project(target)
    # saved beside the data (same prefix): the base path stays relative, the pixels resolve in the bucket
    assert again.base_dir == url
    assert sorted(again.views) == sorted(project.views)
    view = sorted(project.views)[0]
    np.testing.assert_array_equal(again.image(view).compute(), project.image(view).compute())
    # a local project saved into the bucket names its (local) pixels absolutely
    tilefuse.open_project(local / "dataset.xml").save(f"s3://{BUCKET}/elsewhere/dataset.xml")
    assert tilefuse.open_project(f"s3://{BUCKET}/elsewhere/dataset.xml").base_dir == local


def test_local_copy_of_a_remote_project_points_at_the_bucket(zarr_project, tmp_path):
    _, url, images = zarr_project
    project = tilefuse.open_project(f"{url}/dataset.xml")
    project.save(tmp_path / "here.xml")
    text = (tmp_path / "here.xml").read_text()
    assert f'<BasePath type="absolute">{url}</BasePath>' in text
    again = tilefuse.open_project(tmp_path / "here.xml")
    np.testing.assert_array_equal(again.image(sorted(again.views)[0]).compute(), images[0])


def test_missing_remote_objects_are_named(s3):
    with pytest.raises(MissingDataError, match=rf"s3://{BUCKET}/nowhere/dataset.xml: project XML not found"):
        tilefuse.open_project(f"s3://{BUCKET}/nowhere/dataset.xml")
    with pytest.raises(ProjectFormatError, match="not well-formed XML"):
        _storage.write_file(f"s3://{BUCKET}/bad/dataset.xml", b"<SpimData><Seq")
        tilefuse.open_project(f"s3://{BUCKET}/bad/dataset.xml")


def test_relative_paths_stay_in_the_bucket():
    from tilefuse.project.paths import parse_location

    assert parse_location("../data.n5", None, "s3://b/p/q") == (None, "s3://b/p/data.n5")
    assert parse_location("data.n5", "relative", "s3://b") == (None, "s3://b/data.n5")
    with pytest.raises(ProjectFormatError, match="leaves the bucket"):
        parse_location("../../x", None, "s3://b/p")


# -- writing ------------------------------------------------------------------------------
def _zarr_read(url, level="0"):
    import zarr

    return zarr.open_array(_storage.zarr_store(f"{url}/{level}", read_only=True), mode="r")[:]


def test_fuse_s3_project_to_s3_equals_local(zarr_project, tmp_path):
    """The whole route in the bucket: XML and pixels read from s3://, OME-Zarr 0.5 written to s3://."""
    local, url, _ = zarr_project
    remote = tilefuse.open_project(f"{url}/dataset.xml")
    out = f"s3://{BUCKET}/fused/out.ome.zarr"
    plan = tilefuse.plan_fusion(remote, chunks=(8, 32, 32))
    assert tilefuse.write_fused(plan, out, shards=32) == out
    tilefuse.write_fused(tilefuse.plan_fusion(tilefuse.open_project(local / "dataset.xml"), chunks=(8, 32, 32)),
                         tmp_path / "out.ome.zarr", shards=32)
    import zarr

    here = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")
    there = zarr.open_group(_storage.zarr_store(out, read_only=True), mode="r")
    assert dict(there.attrs) == dict(here.attrs)  # same NGFF 0.5 metadata
    for level in here.array_keys():
        assert there[level].shards == here[level].shards
        np.testing.assert_array_equal(there[level][:], here[level][:])
    fs, key = _storage.filesystem(out)
    assert not fs.exists(f"{key}/.tilefuse")  # the manifest is gone once the image is complete


def test_remote_write_commits_last_and_resumes_per_shard(s3, monkeypatch):
    """Killed after some shards: no image is readable there; the rerun keeps the uploaded shards."""
    from tilefuse.writers import _shards, ome_zarr

    rng = np.random.default_rng(5)
    image = rng.integers(1, 1000, size=(16, 64, 64), dtype=np.uint16)
    out = f"s3://{BUCKET}/resume/img.ome.zarr"
    commits = []
    real_commit = _shards.commit_shard

    def failing_commit(tmp, final, n, entries):
        if len(commits) == 3:
            raise RuntimeError("killed")
        commits.append(final)
        return real_commit(tmp, final, n, entries)

    monkeypatch.setattr(ome_zarr, "commit_shard", failing_commit)
    with pytest.raises(RuntimeError, match="killed"):
        ome_zarr.write_ome_zarr(image, out, voxel_size=1, chunks=(8, 16, 16), shards=(8, 32, 32), n_levels=2)
    assert not ome_zarr._image_is_complete(out)
    import zarr

    group = zarr.open_group(_storage.zarr_store(out, read_only=True), mode="r")
    assert "ome" not in group.attrs  # a group, but not an image: OME-Zarr readers find no multiscales
    monkeypatch.setattr(ome_zarr, "commit_shard", real_commit)
    s3.served.reset()
    ome_zarr.write_ome_zarr(image, out, voxel_size=1, chunks=(8, 16, 16), shards=(8, 32, 32), n_levels=2)
    shard_puts = [k for m, k in s3.served.keys if m == "PUT" and "/c/" in k]
    assert len(shard_puts) == 8 + 1 - 3  # level 0: 8 shards, level 1 (8x32x32): 1; the 3 committed were kept
    assert not any(k in shard_puts for k in [f"/{c.partition('://')[2]}" for c in commits])
    np.testing.assert_array_equal(_zarr_read(out), image)
    assert ome_zarr._image_is_complete(out)


def test_remote_overwrite_rules(s3):
    from tilefuse.errors import OutputExistsError
    from tilefuse.writers.ome_zarr import ResumeMismatchError, write_ome_zarr

    out = f"s3://{BUCKET}/over/img.ome.zarr"
    a = np.full((8, 32, 32), 7, np.uint16)
    write_ome_zarr(a, out, voxel_size=1, chunks=(8, 16, 16))
    with pytest.raises(OutputExistsError, match="overwrite"):
        write_ome_zarr(a + 1, out, voxel_size=1, chunks=(8, 16, 16))
    np.testing.assert_array_equal(_zarr_read(out), a)  # untouched
    write_ome_zarr(a + 1, out, voxel_size=1, chunks=(8, 16, 16), overwrite=True)
    np.testing.assert_array_equal(_zarr_read(out), a + 1)
    # a command checks before any work (registration may take hours), as for local outputs
    from tilefuse._outputs import check_outputs

    with pytest.raises(OutputExistsError, match="already exists"):
        check_outputs([out], overwrite=False)
    check_outputs([out], overwrite=True)
    check_outputs([f"s3://{BUCKET}/over/new.ome.zarr"], overwrite=False)
    # objects tilefuse did not write are never deleted
    foreign = f"s3://{BUCKET}/foreign/img.ome.zarr"
    _storage.write_file(f"{foreign}/notes.txt", b"mine")
    with pytest.raises(OutputExistsError, match="did not write"):
        write_ome_zarr(a, foreign, voxel_size=1, overwrite=True)
    assert _storage.read_file(f"{foreign}/notes.txt", 100) == b"mine"
    # a partial output of other work is not mixed in: refused with resume="require"
    partial = f"s3://{BUCKET}/partial/img.ome.zarr"
    _storage.write_file(f"{partial}/.tilefuse/manifest.json", b'{"format": "other"}')
    with pytest.raises(ResumeMismatchError, match="other work"):
        write_ome_zarr(a, partial, voxel_size=1, resume="require")
    write_ome_zarr(a, partial, voxel_size=1)  # "auto": deleted, written afresh
    np.testing.assert_array_equal(_zarr_read(partial), a)


def test_remote_output_refuses_what_it_cannot_write(zarr_project):
    from tilefuse.errors import FusionError, OutputIsInputError

    _, url, _ = zarr_project
    project = tilefuse.open_project(f"{url}/dataset.xml")
    plan = tilefuse.plan_fusion(project)
    with pytest.raises(OutputIsInputError, match="input"):
        tilefuse.write_fused(plan, f"{url}/dataset.ome.zarr/s0-t0.zarr/x.ome.zarr")
    with pytest.raises(FusionError, match="only OME-Zarr"):
        tilefuse.write_fused(plan, f"s3://{BUCKET}/x.tif")
    with pytest.raises(ValueError, match="NGFF 0.4"):
        tilefuse.write_fused(plan, f"s3://{BUCKET}/x.ome.zarr", ngff="0.4")


def test_cli_run_from_and_to_s3(zarr_project, tmp_path, capsys):
    """`tilefuse run s3://.../dataset.xml s3://.../fused.ome.zarr`: registered XML and image in the bucket."""
    from tilefuse.cli import main

    _, url, _ = zarr_project
    out = f"s3://{BUCKET}/cli/fused.ome.zarr"
    # two tiles of unrelated noise: nothing to register, and that is allowed here (the test is about the storage)
    assert main(["run", f"{url}/dataset.xml", out, "-q", "--allow-unregistered",
                 "--preview", str(tmp_path / "p.png")]) == 0
    registered = tilefuse.open_project(f"s3://{BUCKET}/cli/fused.registered.xml")
    assert registered.base_dir == url  # saved elsewhere in the bucket: the pixels named by URL
    assert len(registered.views) == 2 and (tmp_path / "p.png").is_file()
    import zarr

    group = zarr.open_group(_storage.zarr_store(out, read_only=True), mode="r")
    assert group.attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"
    assert main(["info", f"s3://{BUCKET}/cli/fused.registered.xml"]) == 0
    assert f"s3://{BUCKET}/cli/fused.registered.xml" in capsys.readouterr().out


def test_hdf5_project_in_a_bucket_opens_and_names_the_url(s3, tmp_path):
    """BDV HDF5 is not read from an object store: the project opens, pixels and interest points are refused."""
    from tilefuse.errors import UnsupportedFormatError
    from tilefuse.interestpoints.storage import container_path

    tilefuse.write_project(tmp_path / "dataset.xml", _tiles(shape=(4, 16, 16), seed=2), [(0, 0, 0), (0, 0, 12)])
    url = f"s3://{BUCKET}/h5proj"
    _upload(tmp_path, url)
    project = tilefuse.open_project(f"{url}/dataset.xml")
    assert len(project.views) == 2
    with pytest.raises(UnsupportedFormatError, match=rf"{url}/dataset.h5.*remote URI"):
        project.image(sorted(project.views)[0])
    with pytest.raises(UnsupportedFormatError, match="local disks only"):
        container_path(project)


def test_zarr_sessions_are_closed(zarr_project):
    """zarr's asynchronous s3fs instance left its aiohttp session open: "Unclosed client session" when it was
    dropped (fsspec's instance cache cleared, as this module's fixture does) or at exit."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    _, url, images = zarr_project
    code = textwrap.dedent(f"""
        import gc, fsspec, tilefuse
        project = tilefuse.open_project({url!r} + "/dataset.xml")
        print(int(project.image(sorted(project.views)[0]).sum().compute()))
        del project
        fsspec.get_filesystem_class("s3").clear_instance_cache()
        gc.collect()
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(tilefuse.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == int(images[0].sum())
    assert "Unclosed" not in proc.stderr, proc.stderr


def test_a_missing_bucket_is_found_before_any_work(zarr_project, capsys, monkeypatch):
    """Writing into a bucket that does not exist was found at the first write, after the work (register,
    fuse), as "cannot write the project XML: not found"."""
    from tilefuse import registration
    from tilefuse.cli import main
    from tilefuse.errors import OutputError

    _, url, _ = zarr_project
    project = tilefuse.open_project(f"{url}/dataset.xml")

    def no_work(*args, **kwargs):
        raise AssertionError("registration ran before the output was checked")

    monkeypatch.setattr(registration.api, "pairwise", no_work)
    assert main(["register", f"{url}/dataset.xml", "-o", "s3://no-such-bucket/registered.xml", "-q"]) == 2
    assert ("s3://no-such-bucket/registered.xml: the bucket 'no-such-bucket' does not exist"
            in capsys.readouterr().err)
    with pytest.raises(OutputError, match="bucket 'no-such-bucket' does not exist"):
        tilefuse.write_fused(tilefuse.plan_fusion(project), "s3://no-such-bucket/fused.ome.zarr")


def test_cluster_write_to_s3_assembles_pieces_in_the_bucket(s3, tmp_path):
    """With a client the workers share no staging folder: each chunk goes to the bucket as a piece and the
    shard's commit, on any worker, assembles them; the result equals the local write, no piece is left."""
    from distributed import Client, LocalCluster

    from tilefuse.writers import ome_zarr

    rng = np.random.default_rng(8)
    image = rng.integers(1, 1000, size=(16, 64, 64), dtype=np.uint16)
    out = f"s3://{BUCKET}/cluster/img.ome.zarr"
    here = ome_zarr.write_ome_zarr(image, tmp_path / "img.ome.zarr", voxel_size=1, chunks=(8, 16, 16),
                                   shards=(8, 32, 32), n_levels=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        ome_zarr.write_ome_zarr(image, out, voxel_size=1, chunks=(8, 16, 16), shards=(8, 32, 32), n_levels=2,
                                client=client)
    for level in ("0", "1"):
        np.testing.assert_array_equal(_zarr_read(out, level), _zarr_read(str(here), level))
    fs, key = _storage.filesystem(out)
    assert not fs.exists(f"{key}/.tilefuse")
    assert ome_zarr._image_is_complete(out)


@pytest.fixture
def refused_credentials(s3):
    """The server refuses the session's access key (403 InvalidAccessKeyId, as S3 answers a wrong key)."""
    s3.refused_keys.add("testing")
    yield
    s3.refused_keys.discard("testing")


def test_wrong_credentials_are_named_not_mistaken_for_a_missing_bucket(zarr_project, capsys, monkeypatch,
                                                                        refused_credentials, tmp_path):
    """A wrong key read as "the bucket does not exist" when writing (s3fs's exists() swallows the 403), and
    must never look like an empty or missing project when reading."""
    from tilefuse import registration
    from tilefuse.cli import main

    _, url, _ = zarr_project
    assert main(["info", f"{url}/dataset.xml"]) == 2
    err = capsys.readouterr().err
    assert f"{url}/dataset.xml: cannot read the project XML: access denied" in err
    assert "check the credentials" in err and "Traceback" not in err

    def no_work(*args, **kwargs):
        raise AssertionError("registration ran before the output was checked")

    monkeypatch.setattr(registration.api, "pairwise", no_work)
    local = tilefuse.demo.make_sample_project(tmp_path / "local", grid=(1, 2), tile_shape=(32, 32), ndim=2)
    assert main(["run", str(local.path), f"s3://{BUCKET}/denied.ome.zarr", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"s3://{BUCKET}/denied.ome.zarr: access to the bucket '{BUCKET}' denied" in err
    assert "does not exist" not in err and "Traceback" not in err
