"""provider accounts, opt-outs and SMS campaigns

Revision ID: 7a41c2d9e5b0
Revises: 3c66e5ff8df8
Create Date: 2026-12-04 22:40:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '7a41c2d9e5b0'
down_revision = '3c66e5ff8df8'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('provider_accounts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('secrets_encrypted', sa.Text(), nullable=False),
    sa.Column('rate_per_second', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('rate_schedules',
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('next_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['provider_accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id')
    )
    op.create_table('opt_outs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('channel', 'address', name='uq_opt_outs_channel_address')
    )
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('channel', sa.String(length=8), server_default='email', nullable=False))
        batch_op.add_column(sa.Column('sms_sender', sa.String(length=64), server_default='', nullable=False))
        batch_op.add_column(sa.Column('provider_account_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            'fk_campaigns_provider_account_id', 'provider_accounts', ['provider_account_id'], ['id'],
            ondelete='SET NULL',
        )


def downgrade():
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_constraint('fk_campaigns_provider_account_id', type_='foreignkey')
        batch_op.drop_column('provider_account_id')
        batch_op.drop_column('sms_sender')
        batch_op.drop_column('channel')

    op.drop_table('opt_outs')
    op.drop_table('rate_schedules')
    op.drop_table('provider_accounts')
