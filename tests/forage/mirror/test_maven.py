"""The real ``mvn`` resolves a project's dependencies through Forage's ``/maven2/`` mirror.

One project, four runs of ``mvn --strict-checksums dependency:list``: with the upstream up,
with the upstream serving corrupt bytes (sidecars still true), with the upstream down, and
against a second, air-gapped Forage loaded by ``forage export`` / ``forage import-car``. The
project depends on an artifact with a transitive dependency and on a relocated artifact, so
POMs, jars, the relocation and checksums all go through Forage; every run starts from a
fresh copy of its dependencies, and the installed jars must equal the published bytes.

Maven's own plugins cannot be downloaded here: the local repository is seeded with a tree
of symlinks to Debian's ``/usr/share/maven-repo`` (packages ``maven``,
``libmaven-dependency-plugin-java`` and ``junit4``), which holds no artifact of the project's,
so everything the project needs comes through Forage. ``settings.xml`` names Forage as the
mirror of everything (``mirrorOf *``) and overrides Maven 3.8's
``maven-default-http-blocker``; the global settings are empty; HOME is a tmp dir.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from indexers import read_lockfile
from indexers.fakeserver import start_fake
from indexers.maven.fake import FakeMaven
from tests.forage.mirror.conftest import forage_mirror, mirror_config
from tests.forage.mirror.test_clients import base_env, need, run
from tests.forage.mirror.test_offline import cli, second_database

pytestmark = pytest.mark.slow

DEBIAN_REPO = Path("/usr/share/maven-repo")
PLUGIN = "org/apache/maven/plugins/maven-dependency-plugin/3.5.0"
GROUP = "org.example.forage"

POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>org.example.consumer</groupId>
  <artifactId>consumer</artifactId>
  <version>1.0</version>
  <dependencies>
    <dependency><groupId>{GROUP}</groupId><artifactId>app</artifactId><version>1.0</version>
    </dependency>
    <dependency><groupId>{GROUP}</groupId><artifactId>old-lib</artifactId><version>1.0</version>
    </dependency>
  </dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId>
    <version>3.5.0</version>
  </plugin></plugins></build>
</project>
"""

SETTINGS = """<settings>
  <mirrors>
    <mirror><id>forage</id><mirrorOf>*</mirrorOf><url>{url}</url></mirror>
    <mirror><id>maven-default-http-blocker</id><mirrorOf>none</mirrorOf>
      <url>http://0.0.0.0/</url><blocked>false</blocked></mirror>
  </mirrors>
</settings>
"""


def need_plugins() -> None:
    if not (DEBIAN_REPO / PLUGIN).is_dir() or not (DEBIAN_REPO / "junit/junit").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail("Debian's maven-dependency-plugin and junit4 are required", pytrace=False)
        pytest.skip("libmaven-dependency-plugin-java and junit4 are not installed")


async def mvn_list(mvn: str, mirror: str, root: Path, local: Path) -> str:
    """Resolve the project through ``mirror`` from scratch; return the dependency list."""
    shutil.rmtree(local / "org/example", ignore_errors=True)
    env = base_env(root)
    # A short-lived JVM starts faster with the C1 compiler alone and a serial collector.
    env["MAVEN_OPTS"] = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto"
    (root / "pom.xml").write_text(POM)
    (root / "settings.xml").write_text(SETTINGS.format(url=mirror))
    (root / "global.xml").write_text("<settings/>\n")
    argv = [mvn, "-B", "-C", "-s", "settings.xml", "-gs", "global.xml"]
    argv += [f"-Dmaven.repo.local={local}", "dependency:list", "-DoutputFile=deps.txt"]
    await run(argv, env=env, cwd=root)
    return (root / "deps.txt").read_text()


def installed(local: Path, artifact: str, filename: str) -> bytes:
    return (local / "org/example/forage" / artifact / "1.0" / filename).read_bytes()


async def test_mvn_resolves_through_forage_up_corrupt_down_and_offline(
    tmp_path: Path, db_url: str, _sqlite_template: Path
) -> None:
    mvn = need("mvn")
    need_plugins()
    fake = FakeMaven()
    lib = fake.publish(f"{GROUP}/lib", "1.0", classifiers=("sources",))
    app = fake.publish(f"{GROUP}/app", "1.0", dependencies=(f"{GROUP}:lib:1.0",))
    fake.relocate(f"{GROUP}/old-lib", "1.0", to=f"{GROUP}:lib:1.0")
    fake.publish_snapshot(f"{GROUP}/lib", "1.1-SNAPSHOT")
    local = tmp_path / "repo"
    await asyncio.to_thread(shutil.copytree, DEBIAN_REPO, local, copy_function=os.symlink)
    expected = {
        ("lib", "lib-1.0.jar"): lib["lib-1.0.jar"],
        ("app", "app-1.0.jar"): app["app-1.0.jar"],
    }

    def check_installed() -> None:
        for (artifact, filename), published in expected.items():
            data = installed(local, artifact, filename)
            assert data == published.data
            assert hashlib.sha1(data).hexdigest() == published.sidecar("sha1")  # noqa: S324

    upstream = await start_fake(fake.make_app())
    online = tmp_path / "online"
    online.mkdir()
    registries = {"maven": fake.config_endpoints(upstream.url)}
    async with forage_mirror(online, db_url, registries=registries) as forage:
        for artifact in ("lib", "app", "old-lib"):
            await forage.ingest("maven", f"{GROUP}/{artifact}")
        assert await forage.archive_all() == 7  # lib: pom, jar, sources; app: 2; old-lib: pom
        mirror = f"{forage.url}/maven2"

        listed = await mvn_list(mvn, mirror, tmp_path / "up", local)
        check_installed()
        assert f"/maven2/{GROUP.replace('.', '/')}/lib/1.0/lib-1.0.jar" in fake.requests.paths()
        keys = {entry.key for entry in read_lockfile(listed.encode())}
        assert keys == {f"pkg:maven/{GROUP}/app@1.0", f"pkg:maven/{GROUP}/lib@1.0"}

        fake.tamper(f"{GROUP}/lib", "1.0")
        fake.tamper(f"{GROUP}/app", "1.0")
        await mvn_list(mvn, mirror, tmp_path / "corrupt", local)
        check_installed()

        await upstream.close()
        await mvn_list(mvn, mirror, tmp_path / "down", local)
        check_installed()

        bom = tmp_path / "bom.json"
        components = [
            {"bom-ref": a, "name": a, "purl": f"pkg:maven/{GROUP}/{a}@1.0?type=jar"}
            for a in ("app", "lib", "old-lib")
        ]
        bom.write_text(json.dumps({"bomFormat": "CycloneDX", "components": components}))
        car = tmp_path / "deps.car"
        source = str(forage.config.source)
        code = await asyncio.to_thread(
            cli, "-c", source, "export", "--lockfile", str(bom), "-o", str(car)
        )
        assert code == 0

    airgap = tmp_path / "airgap"
    airgap.mkdir()
    other = mirror_config(airgap, second_database(tmp_path, _sqlite_template))
    assert other.configured_registries() == ()
    assert await asyncio.to_thread(cli, "-c", str(other.source), "import-car", str(car)) == 0
    async with forage_mirror(airgap, other.database.url or "") as offline:
        await mvn_list(mvn, f"{offline.url}/maven2", tmp_path / "offline", local)
        check_installed()


async def test_an_mvn_resolve_that_worked_once_works_in_an_outage(
    tmp_path: Path, db_url: str
) -> None:
    """Nothing primed: the POMs and jars mvn fetched through Forage are archived in that
    pass, and the same resolve from an empty local repository succeeds with the upstream
    down, the same bytes."""
    mvn = need("mvn")
    need_plugins()
    fake = FakeMaven()
    lib = fake.publish(f"{GROUP}/lib", "1.0")
    app = fake.publish(f"{GROUP}/app", "1.0", dependencies=(f"{GROUP}:lib:1.0",))
    fake.relocate(f"{GROUP}/old-lib", "1.0", to=f"{GROUP}:lib:1.0")
    local = tmp_path / "repo"
    await asyncio.to_thread(shutil.copytree, DEBIAN_REPO, local, copy_function=os.symlink)
    upstream = await start_fake(fake.make_app())
    online = tmp_path / "online"
    online.mkdir()
    registries = {"maven": fake.config_endpoints(upstream.url)}
    async with forage_mirror(online, db_url, registries=registries) as forage:
        mirror = f"{forage.url}/maven2"
        assert forage.archived_cids() == []
        await mvn_list(mvn, mirror, tmp_path / "up", local)
        await forage.mirror.registries["maven"].settle()
        assert len(forage.archived_cids()) >= 4  # lib and app: their POMs and jars

        await upstream.close()
        listed = await mvn_list(mvn, mirror, tmp_path / "down", local)
        keys = {entry.key for entry in read_lockfile(listed.encode())}
        assert keys == {f"pkg:maven/{GROUP}/app@1.0", f"pkg:maven/{GROUP}/lib@1.0"}
        assert installed(local, "lib", "lib-1.0.jar") == lib["lib-1.0.jar"].data
        assert installed(local, "app", "app-1.0.jar") == app["app-1.0.jar"].data
