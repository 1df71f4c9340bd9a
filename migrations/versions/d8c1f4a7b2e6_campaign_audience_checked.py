"""remember the fingerprint of a draft's last passing audience check

Revision ID: d8c1f4a7b2e6
Revises: b2d5e8f1a9c3
Create Date: 2026-12-05 01:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd8c1f4a7b2e6'
down_revision = 'b2d5e8f1a9c3'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('audience_checked', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_column('audience_checked')
