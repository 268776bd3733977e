"""The export's output folder: complete or absent (`mnv3_jax.export.staging`), on plain files."""
import os
import re

import pytest

from mnv3_jax.export import staging


def write(folder, name='f', text='x'):
  with open(os.path.join(folder, name), 'w') as f:
    f.write(text)


def test_a_completed_block_becomes_out_and_a_failed_one_leaves_nothing(tmp_path):
  out = tmp_path / 'new' / 'deeper' / 'out'
  with pytest.raises(RuntimeError, match='midway'):
    with staging.staged(str(out)) as tmp:
      assert os.path.dirname(tmp) == str(out.parent)
      assert os.path.basename(tmp) == f'out.tmp-{os.getpid()}'
      write(tmp)
      raise RuntimeError('midway')
  assert os.listdir(tmp_path) == []   # the parent folders made for it are gone too
  with staging.staged(str(out)) as tmp:
    write(tmp, text='done')
    assert not out.exists()   # only once the block completes
  assert sorted(os.listdir(out.parent)) == ['out']
  assert (out / 'f').read_text() == 'done'


def test_an_empty_out_is_replaced_and_a_parent_in_use_is_kept(tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  with staging.staged(str(out)) as tmp:
    write(tmp)
  assert os.listdir(out) == ['f']
  # A folder made for the export that something else wrote into meanwhile stays.
  with pytest.raises(KeyboardInterrupt):
    with staging.staged(str(tmp_path / 'made' / 'out2')):
      write(tmp_path / 'made', 'other')
      raise KeyboardInterrupt
  assert os.listdir(tmp_path / 'made') == ['other']


def test_out_written_during_the_export_is_kept_and_the_export_dropped(tmp_path):
  out = tmp_path / 'out'
  with pytest.raises(ValueError, match=re.escape(f'{out} was written by someone else')):
    with staging.staged(str(out)) as tmp:
      write(tmp, text='export')
      out.mkdir()
      write(out, text='theirs')
  assert sorted(os.listdir(tmp_path)) == ['out'] and (out / 'f').read_text() == 'theirs'


def test_check_out_refuses_what_cannot_become_the_export(tmp_path):
  afile = tmp_path / 'afile'
  write(tmp_path, 'afile')
  full = tmp_path / 'full'
  full.mkdir()
  write(full)
  for out, message in ((afile, f'--out={afile} is a file, not a directory'),
                       (afile / 'sub', f'--out={afile}/sub: {afile} is a file'),
                       (full, f'{full} exists and is not empty'),
                       ('', "out='': pass a new or empty directory")):
    with pytest.raises(ValueError, match=re.escape(message)):
      with staging.staged(str(out)):
        pytest.fail('the block must not run')
  assert sorted(os.listdir(tmp_path)) == ['afile', 'full'] and os.listdir(full) == ['f']
  stale = tmp_path / f'new.tmp-{os.getpid()}'
  stale.mkdir()
  with pytest.raises(ValueError, match=re.escape(str(stale)) + ' exists .* delete it'):
    with staging.staged(str(tmp_path / 'new')):
      pytest.fail('the block must not run')
  assert stale.is_dir() and not (tmp_path / 'new').exists()
